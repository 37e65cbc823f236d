"""Data loading's share of a training step (``small`` and ``paper`` shapes), and site preparation time
against the time to merely read the same DICOM bytes.

    python benchmarks/bench_loading.py [--paper-shape 64] [--paper-n 4] [--prep-patients 3] [--skip-prep]

Loading share: one epoch that only iterates the training DataLoader (exactly the loader ``train_epochs``
uses: same batch size, workers, augmentation) divided by one full training epoch (load + forward +
backward + step), both after a warm-up epoch (volumes then come from the dataset's in-memory cache, as
in every epoch after the first). Preparation: ``run_prepare`` on one embedded-cohort site against (a)
reading every file's bytes and (b) parsing every file with pydicom (pixel data decoded), page cache warm.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Timer, emit, load  # noqa: E402


def loading_share(root: Path, name: str, model_preset: str, shape: int, n: int, batch: int,
                  augment: bool) -> dict[str, Any]:
    """Loader-only epoch / full training epoch for one preset and input shape."""
    import torch

    from common.config import PrepConfig, TrainConfig
    from common.data import PCRDataset, load_cache
    from common.models import build_model, preset
    from common.train import _loader, seed_everything, select_device, train_epochs
    from tests.cache_factory import make_cache

    cache = load_cache(make_cache(root, f"LOAD{name.upper()}", n=n, prep=PrepConfig(shape=(shape,) * 3)))
    cfg = TrainConfig(device="cpu", batch_size=batch, augment=augment)
    ds = PCRDataset(cache, cache.labelled_ids(), augment=augment)
    seed_everything(0)
    model = build_model(preset(model_preset, in_channels=len(cache.channels)))
    train_epochs(model, ds, cfg, 1)  # warm-up: fills the in-memory volume cache
    with Timer() as t_load:
        batches = sum(1 for _ in _loader(ds, cfg, select_device(cfg), train=True))
    with Timer() as t_train:
        train_epochs(model, ds, cfg, 1)
    out = {"preset": model_preset, "shape": [3, shape, shape, shape], "n": n, "batch": batch, "augment": augment,
           "batches": batches, "load_s_per_step": t_load.s / batches, "step_s": t_train.s / batches,
           "loading_share": t_load.s / t_train.s, "threads": torch.get_num_threads(), "load_1min": load()}
    print(f"{model_preset:6s} {out['shape']} batch {batch} augment {augment}: loading "
          f"{out['load_s_per_step'] * 1e3:.1f} ms of a {out['step_s'] * 1e3:.0f} ms step = "
          f"{100 * out['loading_share']:.1f} % (load {load()})", flush=True)
    return out


def prep_vs_read(root: Path, patients: int, site: str) -> dict[str, Any]:
    """Preparation of one cohort site against reading (bytes; pydicom parse) the same DICOM files."""
    import pydicom

    from common.config import PrepConfig
    from common.preprocess.pipeline import run_prepare
    from simulation.cohort import write_cohort

    cohort = write_cohort(root / "cohort", sites=[site], patients_per_site=patients, workers=1, progress=False)
    site_dir = next(d for d in cohort.iterdir() if (d / "dicom").is_dir())
    files = sorted(f for f in (site_dir / "dicom").rglob("*") if f.is_file())
    nbytes = sum(len(f.read_bytes()) for f in files)  # warms the page cache for all three timings
    with Timer() as t_bytes:
        for f in files:
            f.read_bytes()
    with Timer() as t_parse:
        for f in files:
            pydicom.dcmread(f).pixel_array  # noqa: B018 - decoding the pixels is the point
    clinical = next(f for f in site_dir.iterdir() if f.name.startswith("clinical."))
    with Timer() as t_prep:
        res = run_prepare(site_dir / "dicom", clinical, root / "cache", PrepConfig(),
                          boxes=site_dir / "Annotation_Boxes.xlsx", workers=1, progress=False)
    out = {"site": site, "patients": len(res.processed), "files": len(files), "mb": nbytes / 1e6,
           "read_bytes_s": t_bytes.s, "pydicom_parse_s": t_parse.s, "prepare_s": t_prep.s,
           "prepare_over_read_bytes": t_prep.s / t_bytes.s, "prepare_over_pydicom_parse": t_prep.s / t_parse.s,
           "load_1min": load()}
    print(f"prepare {site}: {len(files)} files {nbytes / 1e6:.1f} MB: read bytes {t_bytes.s:.2f} s, pydicom parse "
          f"{t_parse.s:.2f} s, prepare {t_prep.s:.2f} s (x{out['prepare_over_read_bytes']:.0f} / "
          f"x{out['prepare_over_pydicom_parse']:.1f}) (load {load()})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-n", type=int, default=32)
    p.add_argument("--paper-shape", type=int, default=64, help="paper input cube (the paper crops 128; CPU default 64)")
    p.add_argument("--paper-n", type=int, default=4)
    p.add_argument("--prep-patients", type=int, default=3)
    p.add_argument("--prep-site", default="AAI")
    p.add_argument("--skip-prep", action="store_true")
    p.add_argument("--skip-paper", action="store_true")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "loading", "steps": []}
    with tempfile.TemporaryDirectory(prefix="fedpcr-bench-load-") as tmp:
        root = Path(tmp)
        for augment in (False, True):
            result["steps"].append(loading_share(root, "small", "small", 32, args.small_n, 8, augment))
        if not args.skip_paper:
            result["steps"].append(loading_share(root, "paper", "paper", args.paper_shape, args.paper_n, 2, True))
        if not args.skip_prep:
            result["prepare"] = prep_vs_read(root, args.prep_patients, args.prep_site)
    result["max_loading_share"] = max(s["loading_share"] for s in result["steps"])
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
