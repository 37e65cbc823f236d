"""Per-item process-pool map with a progress bar, shared by cohort writing and site preparation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def map_with_progress(fn: Callable[[J], R], jobs: Sequence[J], *, workers: int, desc: str, unit: str,
                      progress: bool) -> list[R]:
    """``[fn(j) for j in jobs]`` in input order, on ``workers`` processes when more than one job and worker."""
    results: list[R] = []
    with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for r in pool.map(fn, jobs, chunksize=1):
                    results.append(r)
                    bar.update()
        else:
            for j in jobs:
                results.append(fn(j))
                bar.update()
    return results
