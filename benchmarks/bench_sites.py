"""The many-site scale: a Flower Ray simulation of the real MAMA-MIA site partition (33 sites: the table's
``site`` code within each collection), semi-synthetic images (factory caches with each site's real patient
count and pCR rate), small volumes. Wall time, peak memory of the whole process tree, per-round times.

    python benchmarks/bench_sites.py [--shape 16] [--rounds 2] [--min-patients 8] [--max-sites 33]

Run on a Ray cluster (docs/scaling.md): ``FEDPCR_RAY_ADDRESS=auto python benchmarks/bench_sites.py --root
/shared/path`` after ``ray start --head`` here and ``ray start --address=HEAD:6379`` on every other node;
the caches are written under ``--root``, which every node must see at the same path.
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
from _bench import PeakMemory, Timer, emit, flower_env, load  # noqa: E402

flower_env()


def mama_mia_partition() -> dict[str, tuple[int, float]]:
    """``{collection/site: (labelled patients, pCR rate)}`` from the real MAMA-MIA table."""
    from simulation.cohort_sites import load_mama_mia

    table = load_mama_mia()
    table = table[table["site"].notna() & table["pcr"].isin([0, 1])]
    groups = table.groupby(["dataset", "site"])["pcr"]
    return {f"{d}_{s}": (int(n), float(r)) for (d, s), n, r in zip(groups.size().index, groups.size(), groups.mean())}


def write_sites(root: Path, partition: dict[str, tuple[int, float]], shape: int, min_patients: int
                ) -> dict[str, Path]:
    """One semi-synthetic cache per real site (planted image signal; the site's count and pCR rate)."""
    from common.config import PrepConfig
    from tests.cache_factory import make_cache

    prep = PrepConfig(shape=(shape,) * 3)
    return {name: make_cache(root, name.replace("_", ""), n=max(n, min_patients), seed=i, prep=prep,
                             pos_rate=min(max(rate, 0.2), 0.8))
            for i, (name, (n, rate)) in enumerate(sorted(partition.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, default=16, help="volume cube (voxels per side)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--min-patients", type=int, default=8, help="smallest site size (the real table has 2-patient sites)")
    p.add_argument("--max-sites", type=int, default=None, help="only the N largest sites")
    p.add_argument("--root", type=Path, default=None, help="where the caches go (shared path on a Ray cluster)")
    args = p.parse_args(argv)
    from common.config import TrainConfig
    from common.models.config import preset
    from simulation.federated import BACKEND_CONFIG, run_federated

    partition = mama_mia_partition()
    if args.max_sites:
        partition = dict(sorted(partition.items(), key=lambda kv: -kv[1][0])[:args.max_sites])
    with tempfile.TemporaryDirectory(prefix="fedpcr-bench-sites-") as tmp:
        root = args.root or Path(tmp)
        with Timer() as t_write:
            caches = write_sites(root / "caches", partition, args.shape, args.min_patients)
        print(f"{len(caches)} site caches ({sum(n for n, _ in partition.values())} real patients) written in "
              f"{t_write.s:.1f} s (load {load()})", flush=True)
        train_cfg = TrainConfig(device="cpu", batch_size=8, augment=False, val_fraction=0.25, test_fraction=0.25)
        with PeakMemory(0.5) as mem, Timer() as t_run:
            res = run_federated(caches, root / "run", strategy="fedavg", num_rounds=args.rounds,
                                model_cfg=preset("small", in_channels=3), train_cfg=train_cfg, local_epochs=1,
                                seed=0, extra_config={"initial-eval": False})
    rows = [r for r in res.history if r["round"] >= 1]
    out = {"benchmark": "sites", "sites": len(caches), "patients": sum(max(n, args.min_patients)
                                                                        for n, _ in partition.values()),
           "shape": [3, args.shape, args.shape, args.shape], "rounds": args.rounds, "write_s": t_write.s,
           "wall_s": t_run.s, "round_s": [r["time_s"] for r in rows], "peak_memory_mb": mem.peak_mb,
           "memory_samples": mem.samples, "sites_per_round": [len(r["per_site"]) for r in rows],
           "final_val_auroc": rows[-1]["pooled_val_auroc"] if rows else None,
           "client_resources": BACKEND_CONFIG["client_resources"], "ray": BACKEND_CONFIG.get("init_args", "local"),
           "within_24gb": mem.peak_mb < 24 * 1024, "load_end": load(), "finished": time.strftime("%H:%M:%S")}
    print(f"{len(caches)} sites: {t_run.s:.1f} s, rounds {[round(s, 1) for s in out['round_s']]} s, peak "
          f"{mem.peak_mb:.0f} MB (load {load()})", flush=True)
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
