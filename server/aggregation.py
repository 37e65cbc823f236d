"""Server-side aggregation of evaluation replies: sum threshold counts, per-site and pooled AUROC.

AUROC does not decompose over sites, so sites send TP/FP/TN/FN counts on the shared
``THRESHOLD_GRID``; the pooled ROC comes from the summed counts (never from averaged AUCs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from common.metrics_counts import (
    THRESHOLD_GRID,
    auroc_error_bound_from_counts,
    auroc_from_counts,
    metrics_from_counts,
    youden_from_counts,
)
from common.protocol import (
    AUROC,
    LOSS,
    N_NEG,
    N_POS,
    NUM_EXAMPLES,
    SITE,
    SITE_AUROC,
    SITE_NAME,
    TEST_PREFIX,
    TP,
    counts_from_lists,
)


def counts_from_metrics(metrics: MetricRecord | Mapping[str, Any], prefix: str = "") -> np.ndarray:
    """(len(THRESHOLD_GRID), 4) int64 TP/FP/TN/FN from a reply's count lists (validated, key named on error)."""
    return counts_from_lists(metrics, prefix, length=len(THRESHOLD_GRID))


def safe_auroc(counts: np.ndarray) -> float:
    """AUROC from counts, NaN when a class is absent (undefined, not 0.5)."""
    n_pos = int(counts[0, 0] + counts[0, 3])
    n_neg = int(counts[0, 1] + counts[0, 2])
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(auroc_from_counts(counts))


def sum_counts_aggr(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: SUM count lists and sizes, weight-average scalar losses.

    Adds ``auroc`` (pooled, from the summed validation counts) and, when present, ``test-auroc``.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    out = MetricRecord()
    weights = np.array([float(m[weighting_key]) for m in metrics])
    total = float(weights.sum()) or 1.0
    # Only keys every site sent: an opt-in per-site value (site-auroc, DP epsilon) is never pooled.
    shared = [k for k in metrics[0].keys() if k != SITE_AUROC and all(k in m for m in metrics)]
    for key in shared:
        values = [m[key] for m in metrics]
        if isinstance(values[0], list):
            out[key] = [int(v) for v in np.sum(np.asarray(values, dtype=np.int64), axis=0)]
        elif key in (weighting_key, N_POS, N_NEG) or key.endswith((N_POS, N_NEG, NUM_EXAMPLES)):
            out[key] = int(sum(int(v) for v in values))
        else:
            out[key] = float(np.dot(weights, np.asarray(values, dtype=float)) / total)
    for prefix in ("", TEST_PREFIX):
        if prefix + TP in out:
            out[prefix + AUROC] = safe_auroc(counts_from_metrics(out, prefix))
    return out


@dataclass
class RoundEvaluation:
    """Pooled and per-site validation results of one round."""

    pooled_counts: np.ndarray | None = None
    pooled_auroc: float = float("nan")
    #: Exact bound on |pooled_auroc - per-patient AUROC| (same-cell pairs, ``auroc_error_bound_from_counts``).
    pooled_auroc_bound: float = float("nan")
    per_site: dict[str, dict[str, float]] = field(default_factory=dict)
    test_counts: np.ndarray | None = None
    n_examples: int = 0


def site_name(msg: Message) -> str:
    """The site label a reply carries, else ``node-<id>``."""
    rec = msg.content.config_records.get(SITE) if msg.has_content() else None
    if rec is not None and rec.get(SITE_NAME):
        return str(rec[SITE_NAME])
    return f"node-{msg.metadata.src_node_id}"


def evaluate_replies(replies: Iterable[Message]) -> RoundEvaluation:
    """Sum the counts of the valid evaluate replies; per-site AUROC computed server-side from each."""
    result = RoundEvaluation()
    for msg in replies:
        if msg.has_error():
            continue
        m = next(iter(msg.content.metric_records.values()))
        counts = counts_from_metrics(m)
        result.pooled_counts = counts if result.pooled_counts is None else result.pooled_counts + counts
        n = int(m[NUM_EXAMPLES])
        result.n_examples += n
        site = {AUROC: safe_auroc(counts), "n": float(n), LOSS: float(m.get(LOSS, float("nan")))}
        if TEST_PREFIX + TP in m:
            tc = counts_from_metrics(m, TEST_PREFIX)
            result.test_counts = tc if result.test_counts is None else result.test_counts + tc
            site[TEST_PREFIX + AUROC] = safe_auroc(tc)
        result.per_site[site_name(msg)] = site
    if result.pooled_counts is not None:
        result.pooled_auroc = safe_auroc(result.pooled_counts)
        result.pooled_auroc_bound = float(auroc_error_bound_from_counts(result.pooled_counts))
    return result


def threshold_from_counts(counts: np.ndarray, youden_weight: float = 0.5) -> float:
    """Operating threshold on the grid maximising w*sens + (1-w)*spec - 1 (Youden at w=0.5)."""
    return float(youden_from_counts(np.asarray(counts, dtype=np.int64), w=youden_weight))


def val_metrics_from_counts(counts: np.ndarray, threshold: float) -> dict[str, float]:
    """Pooled validation metrics at ``threshold`` plus AUROC, from summed counts."""
    out = {k: float(v) for k, v in dict(metrics_from_counts(counts, threshold)).items()
           if isinstance(v, (int, float, np.number))}
    out[AUROC] = safe_auroc(np.asarray(counts))
    out["n"] = float(counts[0, :].sum())
    return out
