"""Aggregatable threshold-count state (declearn-style): per-site TP/FP/TN/FN on a fixed score grid.

AUROC does not decompose over sites, but confusion counts at fixed thresholds do: every site computes
:func:`threshold_counts` on the same :data:`THRESHOLD_GRID`, the server sums the arrays element-wise
(compatible with secure aggregation) and recovers the pooled ROC curve, AUROC and any operating point
exactly up to the grid resolution.

Grid choice: the union of a uniform grid of step 1/2000 on [0, 1] and a logit-spaced grid
(logit step 0.05 over [-16, 16]). Binning only loses information on positive/negative pairs whose scores
fall between two adjacent grid points (those pairs count as ties, 1/2). The uniform part keeps every bin
<= 0.0005 wide, so even an under-trained network whose sigmoid outputs sit in a narrow band (e.g.
0.47-0.53, 120 bins) or a focal-loss model with scores in 0.15-0.35 keeps its ranking; the logit part
adds resolution in the tails (p < 0.01 or p > 0.99) where confident models put most patients and a
uniform grid would lump them together. Measured |AUROC(summed counts of 3 sites) - exact pooled AUROC|
(``benchmarks/bench_metrics.py``, 50 draws each): wide logit-normal scores max 2e-4; confident models 3e-4;
focal-loss band 0.15-0.40 4e-4; band 0.48-0.53 1.3e-3; band 0.26-0.29 2.0e-3 (all < 0.005, the bound
``tests/test_metrics.py`` enforces). 2641 thresholds = ~10k int64 per site per evaluation, negligible next
to the model weights.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit

#: Columns of a counts array, in order.
COUNT_COLUMNS: tuple[str, ...] = ("tp", "fp", "tn", "fn")


def make_threshold_grid(uniform_step: float = 0.0005, logit_step: float = 0.05,
                        logit_max: float = 16.0) -> np.ndarray:
    """Sorted unique thresholds in [0, 1]: uniform grid of ``uniform_step`` U sigmoid of a logit grid."""
    n_uniform = int(round(1.0 / uniform_step)) + 1
    uniform = np.linspace(0.0, 1.0, n_uniform)
    n_logit = int(round(2 * logit_max / logit_step)) + 1
    logit = expit(np.linspace(-logit_max, logit_max, n_logit))
    grid = np.unique(np.concatenate([uniform, logit]))
    # Drop logit points that almost duplicate a uniform point (keeps the grid free of near-ties).
    keep = np.concatenate([[True], np.diff(grid) > 1e-9])
    return grid[keep]


#: The fixed score grid shared by every site (ascending, includes 0 and 1).
THRESHOLD_GRID: np.ndarray = make_threshold_grid()
THRESHOLD_GRID.setflags(write=False)


def _check_labels_scores(y: np.ndarray, scores: np.ndarray, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (0/1) and scores (finite; in [0, 1] if ``probabilities``)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} labels vs {s.size} scores")
    bad_y = ~np.isin(y, (0.0, 1.0))
    if bad_y.any():
        i = int(np.flatnonzero(bad_y)[0])
        raise ValueError(f"labels must be 0/1 with no missing values; {int(bad_y.sum())} bad, first at index {i}: {y[i]!r}")
    bad_s = ~np.isfinite(s)
    if bad_s.any():
        i = int(np.flatnonzero(bad_s)[0])
        raise ValueError(f"scores must be finite; {int(bad_s.sum())} bad, first at index {i}: {s[i]!r}")
    if probabilities and s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(f"scores must be probabilities in [0, 1] (got min {s.min():.4g}, max {s.max():.4g}); "
                         "apply a sigmoid to logits first")
    return y.astype(np.int64), s


def threshold_counts(y: np.ndarray, scores: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Confusion counts at every grid threshold, ``(len(grid), 4)`` int64 columns TP, FP, TN, FN.

    A patient is predicted positive iff ``score >= t``. Summing the arrays of several sites gives the
    counts of the pooled patients exactly; a one-class site still contributes valid counts.
    """
    y, s = _check_labels_scores(y, scores, probabilities=True)
    grid = np.asarray(grid, dtype=np.float64)
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    # number with score >= t = n - number with score < t
    tp = pos.size - np.searchsorted(pos, grid, side="left")
    fp = neg.size - np.searchsorted(neg, grid, side="left")
    out = np.empty((grid.size, 4), dtype=np.int64)
    out[:, 0] = tp
    out[:, 1] = fp
    out[:, 2] = neg.size - fp
    out[:, 3] = pos.size - tp
    return out


def _check_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counts must have shape (n_thresholds, 4) [TP, FP, TN, FN]; got {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("counts are empty (no thresholds)")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    c = c.astype(np.int64)
    n_pos, n_neg = c[:, 0] + c[:, 3], c[:, 1] + c[:, 2]
    if (n_pos != n_pos[0]).any() or (n_neg != n_neg[0]).any():
        raise ValueError("counts are inconsistent: TP+FN or FP+TN differ between thresholds")
    return c


def class_sizes(counts: np.ndarray) -> tuple[int, int]:
    """(n_pos, n_neg) of a counts array."""
    c = _check_counts(counts)
    return int(c[0, 0] + c[0, 3]), int(c[0, 1] + c[0, 2])


def roc_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` from counts, ordered by increasing FPR, with (0,0) and (1,1) ends.

    NaN arrays when a class is absent (the ROC is undefined).
    """
    c = _check_counts(counts).astype(np.float64)
    n_pos, n_neg = c[0, 0] + c[0, 3], c[0, 1] + c[0, 2]
    if n_pos == 0 or n_neg == 0:
        return np.array([np.nan]), np.array([np.nan])
    tpr = c[:, 0] / n_pos
    fpr = c[:, 1] / n_neg
    fpr = np.concatenate([[0.0], fpr[::-1], [1.0]])  # grid ascending -> rates descending; reverse
    tpr = np.concatenate([[0.0], tpr[::-1], [1.0]])
    order = np.lexsort((tpr, fpr))
    return fpr[order], tpr[order]


def auroc_from_counts(counts: np.ndarray) -> float:
    """Trapezoidal AUROC from (summed) counts; NaN when a class is absent.

    Equals the exact AUROC (ties = 1/2) whenever no positive and negative score share a grid interval.
    """
    fpr, tpr = roc_from_counts(counts)
    if np.isnan(fpr).any():
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def auroc_error_bound_from_counts(counts: np.ndarray) -> float:
    """Exact bound on |auroc_from_counts - exact AUROC| from the counts alone; NaN when a class is absent.

    The trapezoid through the grid points is the Mann-Whitney AUROC of the scores replaced by their grid
    cell ([g_k, g_k+1), plus the cells below g_0 and at/above the last point): pairs in different cells
    keep their order, a (positive, negative) pair in the same cell counts 1/2 instead of 1, 1/2 or 0.
    So the error is at most ``sum_k pos_k * neg_k / (2 * n_pos * n_neg)``, with ``pos_k``/``neg_k`` the
    cell occupancies (TP/FP differences between adjacent thresholds). Equality holds when every
    positive lies above every negative of its cell (or every one below).
    """
    c = _check_counts(counts)
    n_pos, n_neg = int(c[0, 0] + c[0, 3]), int(c[0, 1] + c[0, 2])
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    pos_cells = -np.diff(np.concatenate([[n_pos], c[:, 0], [0]]))
    neg_cells = -np.diff(np.concatenate([[n_neg], c[:, 1], [0]]))
    shared = float(np.dot(pos_cells.astype(np.float64), neg_cells.astype(np.float64)))
    return shared / (2.0 * n_pos * n_neg)


def _grid_index(threshold: float, grid: np.ndarray) -> int:
    """Index of the grid point nearest ``threshold``."""
    i = int(np.clip(np.searchsorted(grid, threshold), 1, grid.size - 1))
    return i - 1 if abs(grid[i - 1] - threshold) <= abs(grid[i] - threshold) else i


def rates(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, balanced accuracy from one confusion table (NaN if undefined)."""
    def div(a: float, b: float) -> float:
        return float(a / b) if b > 0 else float("nan")

    sens, spec = div(tp, tp + fn), div(tn, tn + fp)
    return {"sensitivity": sens, "specificity": spec, "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn),
            "balanced_accuracy": float((sens + spec) / 2)}


def metrics_from_counts(counts: np.ndarray, threshold: float, grid: np.ndarray = THRESHOLD_GRID) -> dict[str, float]:
    """Operating-point metrics at the grid threshold nearest ``threshold`` (reported as ``grid_threshold``).

    Keys: sensitivity, specificity, ppv, npv, balanced_accuracy, n_pos, n_neg, tp, fp, tn, fn, grid_threshold.
    """
    c = _check_counts(counts)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.size != c.shape[0]:
        raise ValueError(f"counts have {c.shape[0]} rows but the grid has {grid.size} thresholds")
    i = _grid_index(float(threshold), grid)
    tp, fp, tn, fn = (int(v) for v in c[i])
    out: dict[str, float] = dict(rates(tp, fp, tn, fn))
    out.update(n_pos=tp + fn, n_neg=fp + tn, tp=tp, fp=fp, tn=tn, fn=fn, grid_threshold=float(grid[i]))
    return out


def youden_from_counts(counts: np.ndarray, w: float = 0.5, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """Grid threshold maximising ``w*sens + (1-w)*spec - 1`` from (summed validation) counts.

    ``w=0.5`` is Youden's J; ``w=0.8`` favours sensitivity, ``w=0.2`` specificity. Ties go to the middle of the
    highest plateau of equal J. With one class absent the undefined rate counts as 0 and a warning is raised.
    """
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"Youden weight w must be in [0, 1]; got {w}")
    c = _check_counts(counts).astype(np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.size != c.shape[0]:
        raise ValueError(f"counts have {c.shape[0]} rows but the grid has {grid.size} thresholds")
    n_pos, n_neg = c[0, 0] + c[0, 3], c[0, 1] + c[0, 2]
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"youden_from_counts: one class absent (n_pos={n_pos:.0f}, n_neg={n_neg:.0f}); "
                      "the threshold is not meaningful", RuntimeWarning, stacklevel=2)
    sens = c[:, 0] / n_pos if n_pos > 0 else np.zeros(c.shape[0])
    spec = c[:, 2] / n_neg if n_neg > 0 else np.zeros(c.shape[0])
    j = w * sens + (1.0 - w) * spec
    best = np.flatnonzero(j >= j.max() - 1e-12)
    # The optimum is a plateau of grid points giving the same split; take the middle of the highest plateau
    # so the threshold sits between the validation scores rather than on one of them.
    breaks = np.flatnonzero(np.diff(best) != 1)
    start = best[breaks[-1] + 1] if breaks.size else best[0]
    return float(grid[(start + best[-1]) // 2])


__all__ = ["COUNT_COLUMNS", "THRESHOLD_GRID", "auroc_error_bound_from_counts", "auroc_from_counts", "class_sizes", "make_threshold_grid",
           "metrics_from_counts", "rates", "roc_from_counts", "threshold_counts", "youden_from_counts"]
