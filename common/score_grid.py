"""Where a round's evaluation grid sits: scores mapped s -> sigmoid(scale * (logit(s) - centre)) before counting.

Protected evaluation (client/private_eval.py) bins scores on [0, 1]; a barely trained model scores every
patient within a few hundredths of 0.5 and all of them land in one bin (pooled AUROC reads 0.5). The
coordinator therefore places the grid: it centres and scales the logits it asks the sites to count, from
the previous round's pooled counts. This costs no privacy: the coordinator chooses the weights, so it
can already shift and scale the model's output logit; the map is monotone, so AUROC is unchanged and the
operating threshold found on the grid maps back exactly (:func:`from_grid`).
"""

from __future__ import annotations

import numpy as np

from common.metrics_counts import THRESHOLD_GRID
from common.protocol import MAX_EVAL_LOGIT_CENTRE as MAX_CENTRE
from common.protocol import MAX_EVAL_LOGIT_SCALE as MAX_SCALE

#: Identity grid (what a site uses when the coordinator sends none).
IDENTITY: tuple[float, float] = (0.0, 1.0)
#: The pooled 10th-90th percentile range is mapped to +/- this many logits (scores 0.12-0.88).
TARGET_HALF_WIDTH = 2.0


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def to_grid(scores: np.ndarray, centre: float, scale: float) -> np.ndarray:
    """Scores in grid units (a monotone map of ``scores``; identity for (0, 1))."""
    if (centre, scale) == IDENTITY:
        return np.asarray(scores, dtype=np.float64)
    return _sigmoid(scale * (_logit(scores) - centre))


def from_grid(value: float, centre: float, scale: float) -> float:
    """A threshold found in grid units, back on the model's score scale (inverse of :func:`to_grid`)."""
    if (centre, scale) == IDENTITY:
        return float(value)
    return float(_sigmoid(_logit(np.asarray(value)) / scale + centre))


def _quantile(counts: np.ndarray, q: float) -> float:
    """Smallest grid threshold t with at most a fraction q of the patients scoring >= t (grid units)."""
    at_or_above = counts[:, 0] + counts[:, 1]  # TP + FP at each threshold = patients with score >= t
    n = at_or_above[0]
    k = int(np.argmax(at_or_above <= q * n))
    return float(THRESHOLD_GRID[k])


def next_grid(counts: np.ndarray | None, centre: float, scale: float) -> tuple[float, float]:
    """The grid for the next evaluation from this round's pooled counts (taken on grid (centre, scale)):
    the pooled 10th-90th percentile range maps to +/- TARGET_HALF_WIDTH logits; where every patient fell
    between two grid thresholds the grid zooms 5x around them. No counts: the grid stays."""
    if counts is None:
        return centre, scale
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != len(THRESHOLD_GRID) or counts[0, 0] + counts[0, 1] <= 0:
        return centre, scale
    lo, hi = _quantile(counts, 0.9), _quantile(counts, 0.1)  # 10th and 90th percentile of the scores
    raw_lo, raw_hi = (float(_logit(np.asarray(v))) / scale + centre for v in (lo, hi))
    if raw_hi - raw_lo < 1e-9:
        new_centre, new_scale = raw_lo, scale * 5.0
    else:
        new_centre, new_scale = (raw_lo + raw_hi) / 2.0, 2.0 * TARGET_HALF_WIDTH / (raw_hi - raw_lo)
    return (float(np.clip(new_centre, -MAX_CENTRE, MAX_CENTRE)), float(np.clip(new_scale, 1e-2, MAX_SCALE)))


__all__ = ["IDENTITY", "MAX_CENTRE", "MAX_SCALE", "from_grid", "next_grid", "to_grid"]
