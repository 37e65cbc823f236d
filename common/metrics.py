"""Evaluation statistics for a clinical pCR paper: discrimination, operating points, calibration, net benefit,
stratified bootstrap CIs, DeLong comparisons, and (re-exported) the aggregatable threshold-count state.

Every metric is computed from per-unique-score class histograms, so the point estimate and all bootstrap
resamples share one vectorised code path (1000 resamples of 300 patients: ~40 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit

from common.delong import delong_ci, delong_covariance, delong_test
from common.metrics_counts import (
    COUNT_COLUMNS,
    THRESHOLD_GRID,
    _check_labels_scores,
    auroc_error_bound_from_counts,
    auroc_from_counts,
    class_sizes,
    make_threshold_grid,
    metrics_from_counts,
    rates,
    roc_from_counts,
    threshold_counts,
    youden_from_counts,
)


@dataclass(frozen=True)
class BootstrapConfig:
    """Bootstrap defaults: stratified (positives and negatives resampled separately), percentile CI."""

    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0


_BOOT = BootstrapConfig()

#: Metrics of :func:`binary_report` that get a bootstrap CI, in report order.
REPORT_METRICS: tuple[str, ...] = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv",
                                   "balanced_accuracy", "brier")


# ---------------------------------------------------------------- histogram core


def _histograms(y: np.ndarray, s: np.ndarray, pos_draws: np.ndarray | None = None,
                neg_draws: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique scores (U,) and per-row class histograms (B, U) of positives / negatives.

    ``pos_draws`` (B, m) / ``neg_draws`` (B, n) index into the positives / negatives (bootstrap); None = the
    sample itself (B = 1).
    """
    uniq, inv = np.unique(s, return_inverse=True)
    u = uniq.size
    inv_pos, inv_neg = inv[y == 1], inv[y == 0]

    def hist(inv_cls: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
        if draws is None:
            return np.bincount(inv_cls, minlength=u).astype(np.float64)[None, :]
        b = draws.shape[0]
        if inv_cls.size == 0:
            return np.zeros((b, u))
        flat = (np.arange(b)[:, None] * u + inv_cls[draws]).ravel()
        return np.bincount(flat, minlength=b * u).reshape(b, u).astype(np.float64)

    return uniq, hist(inv_pos, pos_draws), hist(inv_neg, neg_draws)


def _metrics_from_hist(uniq: np.ndarray, hp: np.ndarray, hn: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """All report metrics for each histogram row; NaN where undefined (e.g. PPV with no predicted positives)."""
    m, n = hp.sum(axis=1), hn.sum(axis=1)
    b = hp.shape[0]
    nan = np.full(b, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        # AUROC = P(score_pos > score_neg) + P(tie)/2
        neg_below = np.cumsum(hn, axis=1) - hn
        auroc = np.where((m > 0) & (n > 0), (hp * (neg_below + 0.5 * hn)).sum(axis=1) / (m * n), nan)
        # Average precision = sum over score levels (descending) of delta-recall * precision
        tp_cum = np.cumsum(hp[:, ::-1], axis=1)
        all_cum = tp_cum + np.cumsum(hn[:, ::-1], axis=1)
        prec = np.divide(tp_cum, all_cum, out=np.zeros_like(tp_cum), where=all_cum > 0)
        auprc = np.where(m > 0, (hp[:, ::-1] * prec).sum(axis=1) / m, nan)
        above = uniq >= threshold
        tp, fp = hp[:, above].sum(axis=1), hn[:, above].sum(axis=1)
        tn, fn = n - fp, m - tp
        sens = np.where(m > 0, tp / m, nan)
        spec = np.where(n > 0, tn / n, nan)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), nan)
        brier = ((hp * (uniq - 1.0) ** 2).sum(axis=1) + (hn * uniq**2).sum(axis=1)) / (m + n)
    return {"auroc": auroc, "auprc": auprc, "sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv,
            "balanced_accuracy": (sens + spec) / 2.0, "brier": brier}


def _stratified_draws(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap index draws (B, m) into positives and (B, n) into negatives; class sizes are preserved."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    rng = np.random.default_rng(seed)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    return rng.integers(0, max(m, 1), (n_boot, m)), rng.integers(0, max(n, 1), (n_boot, n))


# ---------------------------------------------------------------- point metrics


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Exact AUROC (Mann-Whitney, ties = 1/2); NaN when one class is absent."""
    yy, s = _check_labels_scores(y, scores, probabilities=False)
    uniq, hp, hn = _histograms(yy, s)
    return float(_metrics_from_hist(uniq, hp, hn, np.inf)["auroc"][0])


def auprc(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (step-wise AUPRC, as sklearn.metrics.average_precision_score); NaN without positives."""
    yy, s = _check_labels_scores(y, scores, probabilities=False)
    uniq, hp, hn = _histograms(yy, s)
    return float(_metrics_from_hist(uniq, hp, hn, np.inf)["auprc"][0])


def brier_score(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared error of probabilities against 0/1 outcomes."""
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    return float(np.mean((s - yy) ** 2))


def binary_cross_entropy(y: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    """Mean BCE (log loss) of probabilities clipped to [eps, 1-eps] against 0/1 outcomes; NaN when empty.

    The one validation/evaluation loss on predicted probabilities (training losses on logits live in
    ``common.losses``).
    """
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    if yy.size == 0:
        return float("nan")
    p = np.clip(s, eps, 1.0 - eps)
    return float(-np.mean(yy * np.log(p) + (1 - yy) * np.log(1.0 - p)))


def confusion_at(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, TN, FN with positive iff ``score >= threshold``."""
    yy, s = _check_labels_scores(y, scores, probabilities=False)
    pred = s >= threshold
    return {"tp": int((pred & (yy == 1)).sum()), "fp": int((pred & (yy == 0)).sum()),
            "tn": int((~pred & (yy == 0)).sum()), "fn": int((~pred & (yy == 1)).sum())}


def threshold_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, balanced accuracy at a fixed threshold (NaN where undefined)."""
    c = confusion_at(y, scores, threshold)
    return rates(c["tp"], c["fp"], c["tn"], c["fn"])


def point_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """All :data:`REPORT_METRICS` on the sample itself (no CI)."""
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    uniq, hp, hn = _histograms(yy, s)
    return {k: float(v[0]) for k, v in _metrics_from_hist(uniq, hp, hn, threshold).items()}


# ---------------------------------------------------------------- bootstrap


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_metrics(y: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = _BOOT.n_boot, seed: int = _BOOT.seed
                      ) -> dict[str, np.ndarray]:
    """Stratified bootstrap replicates (n_boot,) of every :data:`REPORT_METRICS` entry at a fixed threshold."""
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    pos_draws, neg_draws = _stratified_draws(yy, n_boot, seed)
    uniq, hp, hn = _histograms(yy, s, pos_draws, neg_draws)
    return _metrics_from_hist(uniq, hp, hn, threshold)


def binary_report(y: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = _BOOT.n_boot, seed: int = _BOOT.seed,
                  alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "ci_low", "ci_high"}}`` with stratified-bootstrap percentile CIs.

    Metrics: :data:`REPORT_METRICS` at ``threshold`` (positive iff score >= threshold), plus n, n_pos and
    prevalence in the same shape with NaN CIs (fixed by stratification). Undefined values are NaN.
    """
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    point = point_metrics(yy, s, threshold)
    boot = bootstrap_metrics(yy, s, threshold, n_boot=n_boot, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for name in REPORT_METRICS:
        lo, hi = _percentile_ci(boot[name], alpha) if np.isfinite(point[name]) else (float("nan"),) * 2
        out[name] = {"value": point[name], "ci_low": lo, "ci_high": hi}
    n, n_pos = int(yy.size), int(yy.sum())
    for name, value in (("n", n), ("n_pos", n_pos), ("prevalence", n_pos / n if n else float("nan"))):
        out[name] = {"value": float(value), "ci_low": float("nan"), "ci_high": float("nan")}
    return out


def bootstrap_roc_band(y: np.ndarray, scores: np.ndarray, fpr_grid: np.ndarray | None = None, n_boot: int = _BOOT.n_boot,
                       seed: int = _BOOT.seed, alpha: float = _BOOT.alpha) -> pd.DataFrame:
    """Pointwise stratified-bootstrap band of the ROC curve: DataFrame(fpr, tpr_low, tpr_median, tpr_high)."""
    yy, s = _check_labels_scores(y, scores, probabilities=False)
    if yy.min() == yy.max():
        raise ValueError("ROC band needs both classes")
    fpr_grid = np.linspace(0, 1, 101) if fpr_grid is None else np.asarray(fpr_grid, dtype=float)
    pos_draws, neg_draws = _stratified_draws(yy, n_boot, seed)
    _, hp, hn = _histograms(yy, s, pos_draws, neg_draws)
    tpr = np.concatenate([np.zeros((n_boot, 1)), np.cumsum(hp[:, ::-1], axis=1) / hp.sum(1, keepdims=True)], axis=1)
    fpr = np.concatenate([np.zeros((n_boot, 1)), np.cumsum(hn[:, ::-1], axis=1) / hn.sum(1, keepdims=True)], axis=1)
    # Highest TPR reachable at FPR <= f (step ROC, vertical segments taken at their top).
    curves = np.empty((n_boot, fpr_grid.size))
    for b in range(n_boot):
        idx = np.searchsorted(fpr[b], fpr_grid + 1e-12, side="right") - 1
        curves[b] = tpr[b][idx]
    lo, med, hi = np.percentile(curves, [100 * alpha / 2, 50, 100 * (1 - alpha / 2)], axis=0)
    return pd.DataFrame({"fpr": fpr_grid, "tpr_low": lo, "tpr_median": med, "tpr_high": hi})


# ---------------------------------------------------------------- operating point


def choose_threshold(y: np.ndarray, scores: np.ndarray, w: float = 0.5) -> float:
    """Weighted-Youden operating point on VALIDATION data: argmax ``w*sens + (1-w)*spec - 1``.

    ``w=0.5`` is Youden's J, ``w=0.8`` an early high-sensitivity point, ``w=0.2`` high specificity. The
    returned threshold lies midway between the lowest score called positive and the next lower score, so
    it splits validation identically and is applied unchanged to test data (positive iff score >= t).
    Ties in J go to the highest threshold.
    """
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"Youden weight w must be in [0, 1]; got {w}")
    yy, s = _check_labels_scores(y, scores, probabilities=False)
    m, n = int(yy.sum()), int((yy == 0).sum())
    if m == 0 or n == 0:
        raise ValueError(f"choose_threshold needs both classes in the validation data; got {m} positives, {n} negatives")
    uniq, hp, hn = _histograms(yy, s)
    desc = uniq[::-1]
    tp = np.concatenate([[0.0], np.cumsum(hp[0, ::-1])])  # candidate k: positive iff s >= desc[k-1]
    tn = n - np.concatenate([[0.0], np.cumsum(hn[0, ::-1])])
    j = w * tp / m + (1 - w) * tn / n
    k = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # first = highest threshold
    if k == 0:  # everybody negative
        return float(np.nextafter(desc[0], np.inf))
    if k == desc.size:  # everybody positive
        return float(desc[-1])
    return float((desc[k - 1] + desc[k]) / 2.0)


# ---------------------------------------------------------------- calibration and net benefit


def calibration(y: np.ndarray, scores: np.ndarray, n_bins: int = 10, strategy: str = "quantile") -> dict[str, Any]:
    """Reliability bins plus logistic recalibration on logit(score).

    Returns arrays ``bin_low, bin_high, mean_predicted, observed_rate, count`` (non-empty bins only) and
    scalars ``slope``, ``intercept`` (fit of ``logit P(y=1) = a + b*logit(score)``), ``citl``
    (calibration-in-the-large: ``a`` with slope fixed at 1), ``brier``. Perfect calibration: slope 1, 0, 0.
    """
    from sklearn.linear_model import LogisticRegression

    yy, s = _check_labels_scores(y, scores, probabilities=True)
    if strategy == "quantile":
        edges = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)))
    elif strategy == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)
    else:
        raise ValueError(f"calibration strategy must be 'quantile' or 'uniform'; got {strategy!r}")
    if edges.size < 2:
        edges = np.array([s.min(), s.max()])
    idx = np.clip(np.searchsorted(edges[1:-1], s, side="left"), 0, edges.size - 2)  # as sklearn
    count = np.bincount(idx, minlength=edges.size - 1)
    keep = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=s, minlength=edges.size - 1) / count
        obs = np.bincount(idx, weights=yy.astype(float), minlength=edges.size - 1) / count
    out: dict[str, Any] = {"bin_low": edges[:-1][keep], "bin_high": edges[1:][keep], "mean_predicted": mean_pred[keep],
                           "observed_rate": obs[keep], "count": count[keep], "slope": float("nan"),
                           "intercept": float("nan"), "citl": float("nan"), "brier": float(np.mean((s - yy) ** 2))}
    if yy.min() != yy.max():
        lg = logit(np.clip(s, 1e-6, 1 - 1e-6))
        if np.ptp(lg) > 0:
            fit = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(lg[:, None], yy)
            out["slope"], out["intercept"] = float(fit.coef_[0, 0]), float(fit.intercept_[0])
        out["citl"] = float(brentq(lambda a: float(np.sum(yy - expit(a + lg))), -50.0, 50.0))
    return out


def net_benefit(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Net benefit at threshold probability t: TP/n - FP/n * t/(1-t) (Vickers & Elkin 2006)."""
    c = confusion_at(y, scores, threshold)
    n = sum(c.values())
    return (c["tp"] - c["fp"] * threshold / (1 - threshold)) / n


def decision_curve(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Decision curve: DataFrame(threshold, net_benefit, treat_all, treat_none) over thresholds in (0, 1)."""
    yy, s = _check_labels_scores(y, scores, probabilities=True)
    t = np.arange(0.01, 0.991, 0.01) if thresholds is None else np.asarray(thresholds, dtype=float).ravel()
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("decision-curve thresholds must lie strictly between 0 and 1")
    n = yy.size
    pos = np.sort(s[yy == 1])
    neg = np.sort(s[yy == 0])
    tp = pos.size - np.searchsorted(pos, t, side="left")
    fp = neg.size - np.searchsorted(neg, t, side="left")
    odds = t / (1 - t)
    prev = pos.size / n
    return pd.DataFrame({"threshold": t, "net_benefit": tp / n - fp / n * odds,
                         "treat_all": prev - (1 - prev) * odds, "treat_none": np.zeros_like(t)})


__all__ = [
    "BootstrapConfig", "COUNT_COLUMNS", "REPORT_METRICS", "THRESHOLD_GRID", "auprc", "auroc",
    "auroc_error_bound_from_counts", "auroc_from_counts", "binary_cross_entropy", "binary_report", "bootstrap_metrics", "bootstrap_roc_band", "brier_score", "calibration",
    "choose_threshold", "class_sizes", "confusion_at", "decision_curve", "delong_ci", "delong_covariance",
    "delong_test", "make_threshold_grid", "metrics_from_counts", "net_benefit", "point_metrics", "rates",
    "roc_from_counts", "threshold_counts", "threshold_metrics", "youden_from_counts",
]
