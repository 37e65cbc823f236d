"""One trained arm's results: :class:`ArmResult`, its tidy metric rows and ``results.csv``.

An arm is one trained model (method x experiment x seed); its rows go into results.csv, its per-patient
scores stay on this machine for ROC curves and DeLong tests. Nothing here trains anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

#: Columns of results.csv (docs/CONTRACTS.md section 6).
ROW_COLUMNS: tuple[str, ...] = (
    "experiment", "method", "train_sites", "test_site", "metric", "value", "ci_low", "ci_high", "seed",
)

#: Name of the pooled internal test set (concatenation of every training site's internal test split).
POOLED = "pooled"


@dataclass
class ArmResult:
    """One trained model (method x experiment x seed) and everything measured on it.

    ``predictions[test_site] = {"ids": [...], "y": [...], "score": [...]}`` stays on this machine; only
    ``rows`` go into results.csv. ``train_patients`` records who trained (for leakage audits).
    """

    arm_id: str
    experiment: str
    method: str
    seed: int
    train_sites: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    train_patients: dict[str, list[str]] = field(default_factory=dict)
    threshold: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def json_default(obj: Any) -> Any:
    """``json.dumps`` default for numpy scalars/arrays and paths (arm files, config.json)."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def metric_rows(experiment: str, method: str, train_sites: Iterable[str], test_site: str, seed: int,
                report: dict[str, dict[str, float]], n: int | None = None,
                n_pos: int | None = None) -> list[dict[str, Any]]:
    """Tidy rows from a ``common.metrics.binary_report`` dict (plus ``n`` / ``n_pos`` count rows)."""
    base = {"experiment": experiment, "method": method, "train_sites": ";".join(sorted(train_sites)),
            "test_site": test_site, "seed": int(seed)}
    rows = [{**base, "metric": name, "value": _f(v.get("value")), "ci_low": _f(v.get("ci_low")),
             "ci_high": _f(v.get("ci_high"))} for name, v in report.items()]
    for name, value in (("n", n), ("n_pos", n_pos)):
        if value is not None and name not in report:
            rows.append({**base, "metric": name, "value": float(value), "ci_low": math.nan, "ci_high": math.nan})
    return rows


def _f(x: Any) -> float:
    """Float, NaN for anything that is not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def evaluate_predictions(y: np.ndarray, scores: np.ndarray, threshold: float, *, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """``common.metrics.binary_report`` at a fixed threshold; AUROC/AUPRC are NaN when one class is absent."""
    from common.metrics import binary_report

    return binary_report(np.asarray(y, dtype=float), np.asarray(scores, dtype=float), threshold,
                         n_boot=n_boot, seed=seed)


def results_frame(arms: Iterable[ArmResult]) -> pd.DataFrame:
    """All arms' rows as one tidy DataFrame with exactly :data:`ROW_COLUMNS`."""
    rows = [r for arm in arms for r in arm.rows]
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    return frame.sort_values(["experiment", "method", "test_site", "seed", "metric"], kind="stable",
                             ignore_index=True)


def write_results_csv(arms: Iterable[ArmResult], path: Path) -> Path:
    """Write results.csv (tidy, one row per experiment x method x test set x metric x seed)."""
    results_frame(arms).to_csv(path, index=False)
    return path
