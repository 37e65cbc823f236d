"""Per-item process-pool map with a progress bar, shared by cohort writing and site preparation.

A worker process that dies (out of memory, a segfault in a codec, SIGKILL) breaks a
``ProcessPoolExecutor`` and every job still in it. With ``on_crash`` the map survives that: the jobs not
finished are run again one at a time in a fresh single-worker pool, so the job that kills its worker
again is identified exactly, ``on_crash(job, reason)`` stands in for its result, and the rest go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")

#: What ``on_crash`` is told when a worker process died while running a job.
WORKER_DIED = ("the worker process died (killed by a signal, out of memory, or a crash inside a native "
               "library such as a pixel codec)")


def _pool_map(fn: Callable[[J], R], jobs: Sequence[J], workers: int, done: dict[int, R], bar: tqdm) -> bool:
    """Run ``jobs`` (by index) on a fresh pool, filling ``done``; False when the pool broke."""
    todo = [i for i in range(len(jobs)) if i not in done]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        try:
            for i, r in zip(todo, pool.map(fn, [jobs[i] for i in todo], chunksize=1)):
                done[i] = r
                bar.update()
        except BrokenProcessPool:
            return False
    return True


def map_with_progress(fn: Callable[[J], R], jobs: Sequence[J], *, workers: int, desc: str, unit: str,
                      progress: bool, on_crash: Callable[[J, str], R] | None = None) -> list[R]:
    """``[fn(j) for j in jobs]`` in input order, on ``workers`` processes when more than one job and worker.

    Without ``on_crash`` a dying worker raises ``BrokenProcessPool``; with it, the job that killed its
    worker gets ``on_crash(job, WORKER_DIED)`` as its result and every other job still runs.
    (``workers=1`` runs in this process: nothing can isolate a crash there.)
    """
    done: dict[int, R] = {}
    with tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            if not _pool_map(fn, jobs, workers, done, bar):
                if on_crash is None:
                    raise BrokenProcessPool(f"{desc}: {WORKER_DIED}")
                # one worker, jobs in order: the first job left unfinished by a break is the culprit
                while not _pool_map(fn, jobs, 1, done, bar):
                    culprit = min(i for i in range(len(jobs)) if i not in done)
                    done[culprit] = on_crash(jobs[culprit], WORKER_DIED)
                    bar.update()
        else:
            for i, j in enumerate(jobs):
                done[i] = fn(j)
                bar.update()
    return [done[i] for i in range(len(jobs))]


__all__ = ["WORKER_DIED", "map_with_progress"]
