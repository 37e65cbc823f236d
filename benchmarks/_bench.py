"""Shared pieces of the benchmark scripts: import path, Flower environment, machine line, memory sampler."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def flower_env(home: Path | None = None) -> Path:
    """Private FLWR_HOME, no telemetry / update checks / runtime installs (as tests/conftest.py does)."""
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="fedpcr-bench-flwr-"))
        atexit.register(shutil.rmtree, home, True)
    os.environ.setdefault("FLWR_HOME", str(home))
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return home


def load() -> float:
    """1-minute load average (the machine is shared: every figure carries it)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """What a figure was measured on."""
    import torch

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": bool(torch.cuda.is_available()), "load_1min": load(),
            "threads": torch.get_num_threads()}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between sharers; falls back to RSS)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_memory_mb(root: int | None = None) -> float:
    """PSS of a process and all its descendants (Ray's raylet, GCS and worker processes included), MB."""
    todo, seen, kb = [root or os.getpid()], set(), 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        kb += _pss_kb(pid)
        todo.extend(_children(pid))
    return kb / 1024


class PeakMemory:
    """Samples :func:`tree_memory_mb` every ``every`` seconds in a thread; ``peak_mb`` after the block."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self.peak_mb, self.samples = every, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_memory_mb())
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_memory_mb())


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` (wall seconds)."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def emit(result: dict[str, Any]) -> None:
    """The closing JSON line every benchmark prints (machine and load included)."""
    print(json.dumps({**result, "machine": machine()}, sort_keys=True, default=float), flush=True)
