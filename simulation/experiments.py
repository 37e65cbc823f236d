"""Image experiments on multi-site caches: plan every (fold, arm, seed) job and run it, resuming finished arms.

Every arm is tested on each training site's internal test split, on the pooled internal test split and on
the held-out institution, which never touches training, model selection, thresholds or normalisation
statistics. The jobs' parts live in one module each:

- ``simulation.experiment_config``: arms, :class:`ExperimentConfig`, presets, fingerprint;
- ``simulation.site_prep``: site caches (embedded cohort or a real collection);
- ``simulation.folds``: sites, splits, folds, test sets;
- ``simulation.arms``: training and scoring one arm;
- ``simulation.arm_store``: the resume store (``run_cached``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from simulation.arm_result import POOLED, ArmResult
from simulation.arm_store import run_cached
from simulation.arms import run_arm
from simulation.experiment_config import FEDERATED_ARMS, ExperimentConfig, fingerprint
from simulation.folds import Fold, load_sites, make_folds


def plan(cfg: ExperimentConfig, folds: list[Fold]) -> list[tuple[Fold, str, int]]:
    """(fold, arm, seed) jobs in run order; federated arms only in ``federated_heldout`` folds."""
    jobs = []
    for seed in cfg.seeds:
        for fold in folds:
            for arm in cfg.arms:
                if arm in FEDERATED_ARMS and cfg.federated_heldout is not None and fold.heldout_name and \
                        fold.heldout_name not in cfg.federated_heldout:
                    continue
                jobs.append((fold, arm, seed))
    return jobs


def run_experiment(cfg: ExperimentConfig, caches: dict[str, Path], out_dir: Path, *, resume: bool = True,
                   progress: Callable[[str], None] = print, failures: list[str] | None = None) -> list[ArmResult]:
    """Run every planned (fold, arm, seed); finished arms are read back from ``out_dir/arms``.

    An arm that raises is reported (appended to ``failures``) and the run goes on.
    """
    sites = load_sites(caches, cfg)
    folds = make_folds(sites, cfg)
    jobs = plan(cfg, folds)
    fp = fingerprint(cfg, caches)
    failures = failures if failures is not None else []
    arms: list[ArmResult] = []
    t_start = time.perf_counter()
    for k, (fold, arm_name, seed) in enumerate(jobs, 1):
        arm_id = f"{fold.name}__{arm_name}__s{seed}"
        t0 = time.perf_counter()
        try:
            got = run_cached(out_dir / "arms", arm_id,
                             lambda: run_arm(cfg, sites, fold, arm_name, seed, out_dir / "work"), resume=resume,
                             fingerprint=fp)
        except Exception as exc:  # noqa: BLE001 - one failing arm is reported; the others still run
            failures.append(f"{arm_id}: {type(exc).__name__}: {exc}")
            progress(f"[{k}/{len(jobs)}] {arm_id}: FAILED ({type(exc).__name__}: {exc})")
            continue
        arms += got
        auc = [r["value"] for a in got for r in a.rows
               if r["metric"] == "auroc" and r["test_site"] == (fold.heldout_name or POOLED)]
        shown = f"AUROC {np.nanmean(auc):.3f}" if auc and np.isfinite(np.nanmean(auc)) else ""
        progress(f"[{k}/{len(jobs)}] {arm_id}: {time.perf_counter() - t0:.1f} s {shown} "
                 f"(elapsed {time.perf_counter() - t_start:.0f} s)")
    return arms
