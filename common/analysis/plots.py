"""Figures of the analyses (matplotlib Agg, no pyplot state): subgroup forest plot, acquisition audit bars,
and one patient's explanation panel (Grad-CAM / Integrated Gradients overlays + clinical attributions)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from common.plots import save_figure  # noqa: E402



def plot_forest(path: Path, frame: pd.DataFrame, *, title: str, overall: float | None = None) -> Path:
    """Forest plot: one row per subgroup level with AUROC and its CI; levels without AUROC show their counts."""
    rows = frame[frame["status"] != "unavailable at this site"].reset_index(drop=True)
    fig = Figure(figsize=(7.0, 0.32 * max(len(rows), 4) + 1.4))
    ax = fig.add_subplot()
    ypos = np.arange(len(rows))[::-1]
    for yk, r in zip(ypos, rows.itertuples()):
        label = f"{r.subgroup}: {r.level} (n={r.n}, pCR={r.n_pos})"
        ax.text(-0.02, yk, label, ha="right", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        if pd.notna(r.auroc):
            ax.plot([r.ci_low, r.ci_high], [yk, yk], color="C0", lw=1.5)
            ax.plot([r.auroc], [yk], "s", color="C0", ms=5)
        else:
            ax.text(0.5, yk, "too few for AUROC", ha="center", va="center", fontsize=6, color="0.5")
    ax.axvline(0.5, color="0.6", ls=":", lw=1)
    if overall is not None and np.isfinite(overall):
        ax.axvline(overall, color="C3", ls="--", lw=1, label=f"all patients {overall:.3f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set(xlim=(0, 1), ylim=(-1, len(rows)), yticks=[], xlabel="AUROC (95% bootstrap CI)", title=title)
    return save_figure(fig, path)


def plot_audit(path: Path, frame: pd.DataFrame, *, title: str) -> Path:
    """Bar chart of Spearman rho per numeric parameter (BH p annotated); categorical tests listed below."""
    num = frame[(frame["kind"] == "numeric") & (frame["status"] == "tested")]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(num))
    colors = ["C3" if p < 0.05 else "C0" for p in num["p_fdr"].astype(float)]
    ax.bar(x, num["rho"].astype(float), color=colors)
    for xi, r in zip(x, num.itertuples()):
        ax.text(xi, float(r.rho) + (0.03 if r.rho >= 0 else -0.08), f"q={r.p_fdr:.2g}", ha="center", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, num["parameter"].tolist(), rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(-1, 1), ylabel="Spearman rho with predicted score", title=title)
    cat = frame[(frame["kind"] == "categorical") & (frame["status"] == "tested")]
    other = [f"{r.parameter}: {r.test} p={r.p:.2g}, q={r.p_fdr:.2g}" for r in cat.itertuples()]
    other += [f"{r.parameter}: {r.status}" for r in frame[frame["status"] != "tested"].itertuples()]
    if other:
        ax.text(0.01, -0.55, "\n".join(other), transform=ax.transAxes, fontsize=6, va="top")
        fig.subplots_adjust(bottom=0.45)
    return save_figure(fig, path)


def _overlay(ax, base: np.ndarray, heat: np.ndarray | None, box: tuple[int, int, int, int] | None, title: str,
             cmap: str = "jet") -> None:
    ax.imshow(base, cmap="gray", origin="upper")
    if heat is not None:
        ax.imshow(heat, cmap=cmap, alpha=0.45, origin="upper", vmin=0, vmax=max(float(np.max(heat)), 1e-12))
    if box is not None:  # (y0, y1, x0, x1) inclusive
        y0, y1, x0, x1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="lime", lw=1))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_explanation(path: Path, *, pre: np.ndarray, sub: np.ndarray, gradcam: np.ndarray, ig: np.ndarray,
                     ig_sub: np.ndarray, clinical: pd.Series | None, title: str,
                     box: tuple[int, int, int, int] | None = None) -> Path:
    """Two rows (pre-contrast, subtraction) x (image, Grad-CAM, |IG|) of one axial slice, plus a bar chart of the
    clinical branch's Integrated-Gradients attribution per variable."""
    fig = Figure(figsize=(11.5, 5.2))
    grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.3])
    for r, (name, base, attr) in enumerate((("pre-contrast", pre, ig), ("subtraction", sub, ig_sub))):
        _overlay(fig.add_subplot(grid[r, 0]), base, None, box, name)
        _overlay(fig.add_subplot(grid[r, 1]), base, gradcam, box, f"Grad-CAM on {name}")
        _overlay(fig.add_subplot(grid[r, 2]), base, np.abs(attr), box, f"|IG| of the {name} channel", "magma")
    ax = fig.add_subplot(grid[:, 3])
    if clinical is not None and len(clinical):
        vals = clinical.astype(float)
        ax.barh(np.arange(len(vals)), vals.to_numpy(), color=["C3" if v > 0 else "C0" for v in vals])
        ax.set_yticks(np.arange(len(vals)), vals.index.tolist(), fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("IG attribution to pCR logit", fontsize=8)
        ax.set_title("Clinical branch (Integrated Gradients)", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no clinical branch", ha="center")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


__all__ = ["plot_audit", "plot_explanation", "plot_forest"]
