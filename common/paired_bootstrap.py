"""Paired stratified bootstrap of AUROC differences between models scored on the same patients.

Every resample draws positives and negatives with replacement (class sizes kept, as
``common.metrics.binary_report`` does) and scores ALL models on the same drawn patients, so the
resampled differences keep the models' correlation. A contrast is any weighted sum of the models'
AUROCs: ``fed - pooled`` is ``(1, -1)``, ``fed - mean of k local models`` is ``(1, -1/k, ..., -1/k)``.
The CI is the percentile interval of the resampled contrast; the two-sided p-value is
``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the resamples (never below ``1 / n_boot``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from common.metrics import _stratified_draws
from common.metrics_counts import _check_labels_scores

#: Resamples reports use for paired differences (>= 2000 keeps the 2.5 % tails at >= 50 draws).
DEFAULT_N_BOOT = 2000


def _auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC (ties 1/2) of every row: positives (B, m) against negatives (B, n)."""
    m, n = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def paired_auroc_draws(y: np.ndarray, scores: np.ndarray, n_boot: int = DEFAULT_N_BOOT,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) of k score rows ``(k, N)`` on the sample, and their paired bootstrap replicates (k, n_boot)."""
    rows = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    yy, _ = _check_labels_scores(y, rows[0], probabilities=False)
    for r in rows[1:]:
        _check_labels_scores(yy, r, probabilities=False)
    pos_s, neg_s = rows[:, yy == 1], rows[:, yy == 0]
    if pos_s.shape[1] == 0 or neg_s.shape[1] == 0:
        raise ValueError("a paired AUROC bootstrap needs both classes")
    point = np.array([_auroc_rows(p[None, :], q[None, :])[0] for p, q in zip(pos_s, neg_s)])
    pos_i, neg_i = _stratified_draws(yy, n_boot, seed)  # the draws binary_report uses for one AUROC's CI
    draws = np.vstack([_auroc_rows(p[pos_i], q[neg_i]) for p, q in zip(pos_s, neg_s)])
    return point, draws


def contrast_ci(point: np.ndarray, draws: np.ndarray, weights: np.ndarray,
                alpha: float = 0.05) -> dict[str, float]:
    """Contrast ``weights @ aucs`` with percentile CI and two-sided bootstrap p (keys: difference, ci_low,
    ci_high, p, n_boot)."""
    w = np.asarray(weights, dtype=np.float64)
    d = w @ draws
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return {"difference": float(w @ point), "ci_low": float(lo), "ci_high": float(hi),
            "p": float(max(p, 1.0 / d.size)), "n_boot": int(d.size)}


def paired_auroc_difference(y: np.ndarray, s1: np.ndarray, s2: np.ndarray, n_boot: int = DEFAULT_N_BOOT,
                            seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """AUROC(s1) - AUROC(s2) on the same patients with a paired stratified-bootstrap CI and p-value."""
    point, draws = paired_auroc_draws(y, np.vstack([s1, s2]), n_boot, seed)
    return contrast_ci(point, draws, np.array([1.0, -1.0]), alpha)


__all__ = ["DEFAULT_N_BOOT", "contrast_ci", "paired_auroc_difference", "paired_auroc_draws"]
