"""Server-side aggregation of evaluation replies: sum threshold counts, per-site and pooled AUROC.

AUROC does not decompose over sites, so sites send TP/FP/TN/FN counts on the shared
``THRESHOLD_GRID``; the pooled ROC comes from the summed counts (never from averaged AUCs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

COUNT_KEYS = ("tp", "fp", "tn", "fn")
SITE_RECORD = "site"  # ConfigRecord in replies naming the site (an institution label, not patient data)


def counts_from_metrics(metrics: MetricRecord | dict[str, Any], prefix: str = "") -> np.ndarray:
    """(len(grid), 4) int64 TP/FP/TN/FN array from a reply's ``tp``/``fp``/``tn``/``fn`` lists."""
    cols = [np.asarray(metrics[prefix + k], dtype=np.int64) for k in COUNT_KEYS]
    if len({c.shape for c in cols}) != 1:
        raise ValueError(f"count lists {prefix}tp/fp/tn/fn have different lengths")
    return np.stack(cols, axis=1)


def counts_to_metrics(counts: np.ndarray, prefix: str = "") -> dict[str, list[int]]:
    """Inverse of :func:`counts_from_metrics` (int lists a MetricRecord can carry)."""
    counts = np.asarray(counts, dtype=np.int64)
    return {prefix + k: [int(v) for v in counts[:, j]] for j, k in enumerate(COUNT_KEYS)}


def metrics_module():
    """H4's count functions: ``common.metrics`` (re-exports) or ``common.metrics_counts``."""
    try:
        import common.metrics as m

        if hasattr(m, "threshold_counts"):
            return m
    except ImportError:
        pass
    import common.metrics_counts as mc

    return mc


def safe_auroc(counts: np.ndarray) -> float:
    """AUROC from counts, NaN when a class is absent (undefined, not 0.5)."""
    auroc_from_counts = metrics_module().auroc_from_counts

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
    for key in metrics[0].keys():
        values = [m[key] for m in metrics]
        if isinstance(values[0], list):
            out[key] = [int(v) for v in np.sum(np.asarray(values, dtype=np.int64), axis=0)]
        elif key in (weighting_key, "n-pos", "n-neg") or key.endswith(("-n-pos", "-n-neg", "num-examples")):
            out[key] = int(sum(int(v) for v in values))
        else:
            out[key] = float(np.dot(weights, np.asarray(values, dtype=float)) / total)
    for prefix in ("", "test-"):
        if prefix + "tp" in out:
            out[prefix + "auroc"] = safe_auroc(counts_from_metrics(out, prefix))
    return out


@dataclass
class RoundEvaluation:
    """Pooled and per-site validation results of one round."""

    pooled_counts: np.ndarray | None = None
    pooled_auroc: float = float("nan")
    per_site: dict[str, dict[str, float]] = field(default_factory=dict)
    test_counts: np.ndarray | None = None
    n_examples: int = 0


def site_name(msg: Message) -> str:
    """The site label a reply carries, else ``node-<id>``."""
    rec = msg.content.config_records.get(SITE_RECORD) if msg.has_content() else None
    if rec is not None and rec.get("name"):
        return str(rec["name"])
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
        n = int(m["num-examples"])
        result.n_examples += n
        site = {"auroc": safe_auroc(counts), "n": float(n), "loss": float(m.get("loss", float("nan")))}
        if "test-tp" in m:
            tc = counts_from_metrics(m, "test-")
            result.test_counts = tc if result.test_counts is None else result.test_counts + tc
            site["test-auroc"] = safe_auroc(tc)
        result.per_site[site_name(msg)] = site
    if result.pooled_counts is not None:
        result.pooled_auroc = safe_auroc(result.pooled_counts)
    return result


def threshold_from_counts(counts: np.ndarray, youden_weight: float = 0.5) -> float:
    """Operating threshold on the grid maximising w*sens + (1-w)*spec - 1 (Youden at w=0.5)."""
    return float(metrics_module().youden_from_counts(np.asarray(counts, dtype=np.int64), w=youden_weight))


def val_metrics_from_counts(counts: np.ndarray, threshold: float) -> dict[str, float]:
    """Pooled validation metrics at ``threshold`` plus AUROC, from summed counts."""
    out = {k: float(v) for k, v in dict(metrics_module().metrics_from_counts(counts, threshold)).items()
           if isinstance(v, (int, float, np.number))}
    out["auroc"] = safe_auroc(np.asarray(counts))
    out["n"] = float(counts[0, :].sum())
    return out
