"""GPU figures for the ``paper`` preset: CUDA path check, step time with the data already on the GPU versus
through the DataLoader (workers, pinned memory, augmentation), AMP versus fp32. Run by benchmarks/gpu.sh.

    python benchmarks/bench_gpu.py [--shape 128] [--n 32] [--batch 4] [--steps 10] [--device cuda]

``--device cpu --shape 32 --n 8`` runs the same code on CPU (a smoke check of the script, not a figure).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, load  # noqa: E402

import torch  # noqa: E402


def cuda_check(device: torch.device) -> dict[str, Any]:
    """The CUDA path works: a 3D convolution and its gradient on the device match the CPU result."""
    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device),
                    memory_gb=torch.cuda.get_device_properties(device).total_memory / 2**30)
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16, 16)
    ref = conv(x)
    ref.sum().backward()
    ref_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    conv_d = conv.to(device)
    out = conv_d(x.to(device))
    out.sum().backward()
    info["conv3d_max_abs_err"] = float((out.detach().cpu() - ref.detach()).abs().max())
    info["conv3d_grad_rel_err"] = float((conv_d.weight.grad.cpu() - ref_grad).norm() / ref_grad.norm())
    info["cuda_path_ok"] = info["conv3d_max_abs_err"] < 1e-2 and info["conv3d_grad_rel_err"] < 1e-2
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(model: Any, batches: Any, cfg: Any, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds per optimiser step (train_epochs' step: autocast + GradScaler), after ``warmup`` steps."""
    from common.train import _batch_loss, _to_device, _use_amp, make_loss, make_optimizer

    optimizer = make_optimizer(model, cfg)
    amp = _use_amp(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = make_loss(cfg, __import__("numpy").array([0.0, 1.0]))
    model.train()
    times, it = [], iter(batches())
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(batches())
            batch = next(it)
        batch = _to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            loss = _batch_loss(model, batch, cfg, loss_fn)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure(args: argparse.Namespace, device: torch.device, root: Path) -> list[dict[str, Any]]:
    """paper preset: {loader, on-device data} x {AMP, fp32}."""
    from common.config import PrepConfig, TrainConfig
    from common.data import PCRDataset, load_cache
    from common.models import build_model, preset
    from common.train import _loader, _prepare_model, _to_device
    from tests.cache_factory import make_cache

    cache = load_cache(make_cache(root, "GPU", n=args.n, prep=PrepConfig(shape=(args.shape,) * 3)))
    rows = []
    for amp in (True, False):
        cfg = TrainConfig(device=device.type, amp=amp, batch_size=args.batch, augment=True,
                          num_workers=args.workers if device.type == "cuda" else 0)
        ds = PCRDataset(cache, cache.labelled_ids(), augment=True)
        resident = [_to_device(b, device) for b in _loader(ds, cfg, device, train=True)]  # one epoch, on device
        for source, batches in (("loader", lambda: _loader(ds, cfg, device, train=True)), ("on-device", lambda: resident)):
            torch.manual_seed(0)
            model = _prepare_model(build_model(preset("paper", in_channels=len(cache.channels))), device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = step_times(model, batches, cfg, device, args.steps, args.warmup)
            row = {"data": source, "amp": bool(amp and device.type == "cuda"), "step_s": statistics.median(t),
                   "samples_per_s": args.batch / statistics.median(t), "load_1min": load(),
                   "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
            rows.append(row)
            print(f"paper {[3, args.shape, args.shape, args.shape]} batch {args.batch} data {source:9s} "
                  f"amp {row['amp']!s:5s}: {row['step_s'] * 1e3:8.1f} ms/step, {row['samples_per_s']:6.1f} "
                  f"samples/s", flush=True)
        del resident
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--shape", type=int, default=128)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        emit({"benchmark": "gpu", "cuda_path_ok": False, "error": "CUDA not available (torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda})"})
        return 2
    device = torch.device(args.device)
    check = cuda_check(device)
    print(f"CUDA path check: {check}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedpcr-bench-gpu-") as tmp:
        rows = measure(args, device, Path(tmp))
    by = {(r["data"], r["amp"]): r["step_s"] for r in rows}
    amp_on = device.type == "cuda"
    result = {"benchmark": "gpu", **check, "device": str(device), "shape": [3, args.shape, args.shape, args.shape],
              "batch": args.batch, "steps": rows,
              "loader_over_on_device": by.get(("loader", amp_on), 0) / by.get(("on-device", amp_on), 1),
              "loading_share": 1 - by.get(("on-device", amp_on), 0) / by.get(("loader", amp_on), 1),
              "fp32_over_amp": (by.get(("loader", False), 0) / by.get(("loader", True), 1)) if amp_on else None}
    emit(result)
    return 0 if check["cuda_path_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
