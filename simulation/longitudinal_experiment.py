"""The REAL longitudinal experiment: how much the early-treatment MRI adds, at I-SPY2 sites that never trained.

Inputs per visit set (``simulation.longitudinal_data``): HR + HER2 (``clinical``), + pre-treatment MRI
measurements (``t0``), + their change to the early-treatment visit (``t0-t1``), + the change to the
inter-regimen visit (``t0-t2``). Sites are the I-SPY2 trial-site codes MAMA-MIA gives every patient.
Each visit set runs the clinical experiment's methods (pooled logistic regression, one local model per
site, FedAvg logistic regression through Flower's aggregation) on the SAME folds and splits, so held-out
scores pair patient by patient and DeLong compares every visit set with clinical-only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import to_dict
from common.delong import delong_test
from simulation.arm_result import ArmResult
from simulation.clinical_experiment import ClinicalExperimentConfig, build_folds, run_fold_method
from simulation.longitudinal_data import VISIT_SETS, clinical_data, load_longitudinal
from simulation.longitudinal_report import write_longitudinal_section

#: Base method names (the clinical experiment's ``clinical-lr`` is the pooled model here).
METHOD_NAMES = {"clinical-lr": "pooled-lr"}
#: Published AUROCs the report prints beside ours (ANCHORS.md, SEEDS.md).
ANCHORS = {
    "MRP 2024, I-SPY2, pre-treatment MRI + clinical": 0.80,
    "MRP 2024, I-SPY2, + mid-treatment MRI": 0.83,
    "LR on these tables, 5-fold CV: HR+HER2": 0.670,
    "LR on these tables, 5-fold CV: + T0": 0.694,
    "LR on these tables, 5-fold CV: + T0->T1 change": 0.752,
    "LR on these tables, 5-fold CV: + T0->T2 change": 0.798,
}


@dataclass(frozen=True)
class LongitudinalConfig:
    """Settings of the longitudinal experiment (defaults = the documented run)."""

    visit_sets: tuple[str, ...] = VISIT_SETS
    #: The two I-SPY2 sites with >= 40 patients in the table, left out one at a time.
    heldout: tuple[str, ...] = ("AAI", "AAN")
    #: Training sites with fewer patients are grouped into one ``SMALL`` client.
    min_site_size: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("clinical-lr", "local", "fedavg-lr")
    n_boot: int = 2000

    def clinical_config(self) -> ClinicalExperimentConfig:
        """The clinical experiment's settings for the shared folds and methods (LR hyper-parameters kept)."""
        return ClinicalExperimentConfig(heldout=self.heldout, heldout_collections=(), min_site_size=self.min_site_size,
                                        seeds=self.seeds, methods=self.methods, n_boot=self.n_boot,
                                        n_boot_cross=min(self.n_boot, 200))


def method_name(base: str, visit_set: str) -> str:
    """``pooled-lr@t0-t1``: the method and the visits its inputs come from."""
    return f"{METHOD_NAMES.get(base, base)}@{visit_set}"


def _rename(arms: list[ArmResult], visit_set: str) -> list[ArmResult]:
    for arm in arms:
        arm.method = method_name(arm.method, visit_set)
        arm.arm_id = arm.arm_id.replace("clinical__", f"longitudinal__{visit_set}__", 1)
        for row in arm.rows:
            row["method"] = arm.method
    return arms


def delong_rows(arms: list[ArmResult]) -> list[dict[str, Any]]:
    """For every arm of a visit set other than clinical: DeLong of its held-out AUROC against the same base
    method's clinical-only arm (same fold, seed and patients). Rows ``auroc_diff_vs_clinical`` (with CI)
    and ``delong_p_vs_clinical``; they are also added to the arm's own rows."""
    by_key = {(a.experiment, a.method, a.seed): a for a in arms}
    out: list[dict[str, Any]] = []
    for arm in arms:
        base, _, visit = arm.method.partition("@")
        ref = by_key.get((arm.experiment, f"{base}@clinical", arm.seed))
        held = arm.experiment.removeprefix("heldout-")
        if visit == "clinical" or ref is None or held == arm.experiment or held not in arm.predictions:
            continue
        mine, theirs = arm.predictions[held], ref.predictions[held]
        if mine["ids"] != theirs["ids"]:
            raise ValueError(f"{arm.arm_id}: held-out patients differ from {ref.arm_id}; cannot pair DeLong")
        y = np.asarray(mine["y"], dtype=float)
        test = delong_test(y, np.asarray(mine["score"]), np.asarray(theirs["score"]))
        base_row = {"experiment": arm.experiment, "method": arm.method, "train_sites": ";".join(sorted(arm.train_sites)),
                    "test_site": held, "seed": arm.seed}
        rows = [{**base_row, "metric": "auroc_diff_vs_clinical", "value": test["difference"],
                 "ci_low": test["diff_ci_low"], "ci_high": test["diff_ci_high"]},
                {**base_row, "metric": "delong_p_vs_clinical", "value": test["p"], "ci_low": math.nan,
                 "ci_high": math.nan}]
        arm.rows += rows
        out += rows
    return out


def run_longitudinal_experiment(out_dir: Path, cfg: LongitudinalConfig | None = None, *, resume: bool = True,
                                progress: bool = True) -> tuple[list[ArmResult], Path]:
    """Every visit set x fold x method x seed (finished arms resume from ``out_dir/arms``); writes the report."""
    from common.hashing import stable_hash
    from simulation.arm_store import run_cached
    from simulation.report import write_report

    cfg = cfg or LongitudinalConfig()
    ccfg = cfg.clinical_config()
    out_dir = Path(out_dir)
    table = load_longitudinal()
    fp = stable_hash({k: v for k, v in to_dict(ccfg).items() if k not in ("seeds", "heldout", "methods")})
    arms: list[ArmResult] = []
    t0 = time.perf_counter()
    for visit_set in cfg.visit_sets:
        data = clinical_data(table, visit_set)
        jobs = [(seed, fold, method) for seed in cfg.seeds for fold in build_folds(data, ccfg, seed)
                for method in cfg.methods]
        for k, (seed, fold, method) in enumerate(jobs, 1):
            if progress:
                print(f"[longitudinal {visit_set} {k}/{len(jobs)}] {fold.name} {method} seed {seed}", flush=True)
            group = f"longitudinal__{visit_set}__{fold.name}__{method}__s{seed}"
            arms += run_cached(out_dir / "arms", group,
                               lambda: _rename(run_fold_method(data, fold, method, seed, ccfg), visit_set),
                               resume=resume, fingerprint=fp)
    delong_rows(arms)
    notes = ["REAL data: I-SPY2 public MRI measurements (Multi-feature-MRI-NACT-Data.xlsx), "
             f"{len(table)} patients with a 0/1 pCR and a trial site; sites = MAMA-MIA I-SPY2 site codes",
             "Anchors (AUROC): " + "; ".join(f"{k}: {v:.3f}" for k, v in ANCHORS.items()),
             "Visit sets are cumulative; inputs use fixed transforms (no statistic estimated from patients)",
             f"wall time {time.perf_counter() - t0:.0f} s"]
    config = {"experiment": "longitudinal", "longitudinal_config": to_dict(cfg), "n_patients": int(len(table)),
              "sites": {str(k): int(v) for k, v in table["site"].value_counts().items()}}
    report = write_report(arms, out_dir, title="fedpcr — real longitudinal experiment (I-SPY2 MRI measurements, "
                          "T0 / T1 / T2)", config=config, semi_synthetic=False, notes=notes,
                          n_boot=cfg.n_boot)
    write_longitudinal_section(arms, out_dir, report, cfg.visit_sets, ANCHORS)
    return arms, report


def quick_config(cfg: LongitudinalConfig | None = None) -> LongitudinalConfig:
    """The ``--quick`` settings: one seed, fewer bootstrap resamples."""
    cfg = cfg or LongitudinalConfig()
    return replace(cfg, seeds=cfg.seeds[:1], n_boot=300)
