"""Training throughput: samples/s and seconds per epoch for the ``small`` preset on CPU (and ``paper`` with
AMP when CUDA is present), on a factory-built site cache (data loading included).

    python benchmarks/bench_train.py [--n 96] [--epochs 2] [--threads 1] [--paper-shape 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.config import PrepConfig, TrainConfig  # noqa: E402
from common.data import PCRDataset, load_cache  # noqa: E402
from common.models import build_model, preset  # noqa: E402
from common.train import predict, seed_everything, train_epochs  # noqa: E402
from tests.cache_factory import make_cache  # noqa: E402


def bench(name: str, shape: tuple[int, int, int], n: int, epochs: int, cfg: TrainConfig, root: Path) -> None:
    cache = load_cache(make_cache(root, f"BENCH{shape[0]}", n=n, prep=PrepConfig(shape=shape)))
    ds = PCRDataset(cache, cache.labelled_ids(), augment=cfg.augment)
    seed_everything(0)
    model = build_model(preset(name, in_channels=len(cache.channels)))
    train_epochs(model, ds, cfg, 1)  # warm-up (also fills the in-memory volume cache)
    if cfg.device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_epochs(model, ds, cfg, epochs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / epochs
    t1 = time.perf_counter()
    predict(model, ds, cfg)
    dp = time.perf_counter() - t1
    amp = cfg.amp and cfg.device == "cuda"  # what training actually uses (AMP is CUDA only)
    print(f"{name:6s} input {(3, *shape)} n={n} batch {cfg.batch_size} device {cfg.device} amp {amp} "
          f"threads {torch.get_num_threads()} augment {cfg.augment}: train {n / dt:7.1f} samples/s, "
          f"{dt:6.2f} s/epoch; inference {n / dp:7.1f} samples/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (sets FEDPCR_CPU_THREADS)")
    p.add_argument("--paper-shape", type=int, default=128, help="cube size for the paper preset (GPU only)")
    p.add_argument("--paper-n", type=int, default=64)
    args = p.parse_args(argv)
    if args.threads:
        os.environ["FEDPCR_CPU_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for augment in (False, True):
            bench("small", (32, 32, 32), args.n, args.epochs, TrainConfig(device="cpu", augment=augment), Path(tmp))
        if torch.cuda.is_available():
            cfg = TrainConfig(device="cuda", amp=True, num_workers=4, batch_size=4, augment=True)
            shape = (args.paper_shape,) * 3
            bench("small", (32, 32, 32), args.n, args.epochs, dataclasses.replace(cfg, batch_size=8), Path(tmp))
            bench("paper", shape, args.paper_n, args.epochs, cfg, Path(tmp))
        else:
            print("CUDA not available: paper preset (GPU, AMP) skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
