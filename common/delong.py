"""DeLong's test for correlated AUROCs and DeLong's SE/CI of one AUROC (fast algorithm, Sun & Xu 2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs measured on the same patients
from structural components (placement values); Sun & Xu (IEEE SPL 2014) compute them with mid-ranks in
O(n log n). Used to compare a model against a clinical baseline on the same held-out patients.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from common.metrics_counts import _check_labels_scores


def _placements(y: np.ndarray, score_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs (k,), positive placements V10 (k, m) and negative placements V01 (k, n) via mid-ranks."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise ValueError(f"DeLong needs both classes; got {m} positives and {n} negatives")
    x, z = score_rows[:, pos], score_rows[:, neg]
    tx = rankdata(x, axis=1)  # mid-ranks within positives
    ty = rankdata(z, axis=1)  # within negatives
    tz = rankdata(np.concatenate([x, z], axis=1), axis=1)  # in the pooled sample
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # fraction of negatives below each positive (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # fraction of positives above each negative
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their DeLong covariance matrix (k, k) for k score vectors on the same patients."""
    if not scores:
        raise ValueError("delong_covariance needs at least one score vector")
    checked = [_check_labels_scores(y, s, probabilities=False) for s in scores]
    yy = checked[0][0]
    rows = np.vstack([s for _, s in checked])
    aucs, v10, v01 = _placements(yy, rows)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((rows.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((rows.shape[0],) * 2)
    return aucs, s10 / m + s01 / n


def delong_ci(y: np.ndarray, scores: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """AUROC with DeLong SE and Wald CI ``auc +/- z_{1-alpha/2} * SE`` clipped to [0, 1] (as pROC does)."""
    aucs, cov = delong_covariance(y, scores)
    auc, se = float(aucs[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
    q = float(norm.ppf(1 - alpha / 2))
    return {"auc": auc, "se": se, "ci_low": max(0.0, auc - q * se), "ci_high": min(1.0, auc + q * se)}


def delong_test(y: np.ndarray, s1: np.ndarray, s2: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Two-sided DeLong test of AUROC(s1) = AUROC(s2) on the same patients.

    Returns auc1, auc2, difference (auc1 - auc2), se (of the difference), z, p, and a Wald CI of the
    difference. Identical rankings give z = 0, p = 1.
    """
    aucs, cov = delong_covariance(y, s1, s2)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(var) if var > 1e-15 else 0.0
    if se == 0.0:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / se
    p = float(2 * norm.sf(abs(z)))
    q = float(norm.ppf(1 - alpha / 2))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "difference": diff, "se": se, "z": float(z), "p": p,
            "diff_ci_low": diff - q * se, "diff_ci_high": diff + q * se}


__all__ = ["delong_ci", "delong_covariance", "delong_test"]
