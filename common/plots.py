"""Evaluation figures (matplotlib, Agg, no pyplot state): ROC with bootstrap band, precision-recall,
calibration (reliability) and decision curves. Each function takes ``{name: (y, scores)}`` on the same
patients, writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from common.metrics import (  # noqa: E402
    auprc,
    auroc,
    bootstrap_roc_band,
    calibration,
    confusion_at,
    decision_curve,
)

Curves = dict[str, tuple[np.ndarray, np.ndarray]]
DPI = 130


def _cohort_note(y: np.ndarray) -> str:
    y = np.asarray(y)
    return f"n={y.size}, {int(y.sum())} pCR ({100 * y.mean():.0f}%)"


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG (parent folders made); the one figure writer of the reports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def plot_roc(path: Path, curves: Curves, *, title: str, band: str | None = None, threshold: float | None = None,
             n_boot: int = 1000, seed: int = 0) -> Path:
    """ROC curves; ``band`` names the curve that gets a pointwise 95% bootstrap band (and the operating point)."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    for k, (name, (y, s)) in enumerate(curves.items()):
        color = f"C{k}"
        fpr, tpr, _ = roc_curve(y, s)
        if name == band:
            b = bootstrap_roc_band(y, s, n_boot=n_boot, seed=seed)
            ax.fill_between(b["fpr"], b["tpr_low"], b["tpr_high"], color=color, alpha=0.18, lw=0,
                            label="95% bootstrap band")
        ax.plot(fpr, tpr, color=color, lw=2 if name == band else 1.4, label=f"{name}: AUROC {auroc(y, s):.3f}")
        if name == band and threshold is not None:
            c = confusion_at(y, s, threshold)
            sens, fpr_t = c["tp"] / max(c["tp"] + c["fn"], 1), c["fp"] / max(c["fp"] + c["tn"], 1)
            ax.plot([fpr_t], [sens], "o", color=color, ms=7, mec="k", label=f"operating point (t={threshold:.3f})")
    y0 = next(iter(curves.values()))[0]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title=_cohort_note(y0), title_fontsize=8)
    return save_figure(fig, path)


def plot_pr(path: Path, curves: Curves, *, title: str) -> Path:
    """Precision-recall curves with the prevalence (no-skill) line."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    for k, (name, (y, s)) in enumerate(curves.items()):
        prec, rec, _ = precision_recall_curve(y, s)
        # increasing recall; precision P_k holds on (R_{k-1}, R_k], the step AP integrates
        ax.step(rec[::-1], prec[::-1], where="pre", color=f"C{k}", lw=1.6, label=f"{name}: AP {auprc(y, s):.3f}")
    y0 = next(iter(curves.values()))[0]
    prev = float(np.mean(y0))
    ax.axhline(prev, ls=":", color="grey", lw=1, label=f"prevalence {prev:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, title=_cohort_note(y0), title_fontsize=8)
    return save_figure(fig, path)


def plot_calibration(path: Path, curves: Curves, *, title: str, n_bins: int = 10) -> Path:
    """Reliability diagram (quantile bins, slope/intercept in the legend) above a score histogram."""
    fig = Figure(figsize=(5.6, 6.2))
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3.2, 1]})
    for k, (name, (y, s)) in enumerate(curves.items()):
        cal = calibration(y, s, n_bins=n_bins)
        ax.plot(cal["mean_predicted"], cal["observed_rate"], "o-", color=f"C{k}", ms=4, lw=1.4,
                label=f"{name}: slope {cal['slope']:.2f}, intercept {cal['intercept']:.2f}")
        hx.hist(s, bins=np.linspace(0, 1, 41), color=f"C{k}", alpha=0.45, label=name)
    y0 = next(iter(curves.values()))[0]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed pCR rate", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, title=f"{_cohort_note(y0)}; {n_bins} quantile bins", title_fontsize=8)
    hx.set(xlabel="predicted probability of pCR", ylabel="patients")
    hx.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_decision_curve(path: Path, curves: Curves, *, title: str, thresholds: np.ndarray | None = None) -> Path:
    """Net benefit of each model vs treat-all and treat-none over threshold probabilities."""
    t = np.arange(0.02, 0.81, 0.01) if thresholds is None else np.asarray(thresholds, dtype=float)
    fig = Figure(figsize=(6.0, 4.8))
    ax = fig.add_subplot()
    dc = None
    for k, (name, (y, s)) in enumerate(curves.items()):
        dc = decision_curve(y, s, t)
        ax.plot(dc["threshold"], dc["net_benefit"], color=f"C{k}", lw=1.8, label=name)
    assert dc is not None
    ax.plot(dc["threshold"], dc["treat_all"], ls="--", color="k", lw=1, label="treat all")
    ax.plot(dc["threshold"], dc["treat_none"], ls=":", color="grey", lw=1.2, label="treat none")
    y0 = next(iter(curves.values()))[0]
    prev = float(np.mean(y0))
    ax.set(xlim=(t.min(), t.max()), ylim=(-0.05, max(0.05, prev + 0.05)), xlabel="threshold probability",
           ylabel="net benefit", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, title=_cohort_note(y0), title_fontsize=8)
    return save_figure(fig, path)


__all__ = ["plot_calibration", "plot_decision_curve", "plot_pr", "plot_roc"]
