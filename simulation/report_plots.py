"""Report figures: ROC, decision and calibration curves per held-out site (``common.plots``) and the
per-round pooled validation AUROC of the federated arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulation.arm_result import POOLED, ArmResult
from simulation.summaries import CLINICAL_BASELINE, heldout_site, is_heldout


def _pooled_prediction(arms: list[ArmResult], experiment: str, method: str, site: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one method on one test set (the first seed's)."""
    ys, ss = [], []
    for a in arms:
        if a.experiment == experiment and a.method == method and site in a.predictions:
            ys.append(np.asarray(a.predictions[site]["y"], dtype=float))
            ss.append(np.asarray(a.predictions[site]["score"], dtype=float))
    if not ys:
        return np.array([]), np.array([])
    # Several seeds: the first seed's curve (seeds re-split the same patients, so curves are comparable).
    return ys[0], ss[0]


def write_plots(arms: list[ArmResult], out_dir: Path) -> list[Path]:
    """ROC per held-out site, decision curves, calibration (``common.plots``) and per-round federated AUROC."""
    from common.plots import plot_calibration, plot_decision_curve, plot_roc

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    targets = sorted({(a.experiment, heldout_site(a.experiment)) for a in arms if is_heldout(a.experiment)})
    if not targets:  # no held-out experiment: plot the pooled internal test set instead
        targets = sorted({(a.experiment, POOLED) for a in arms if POOLED in a.predictions})
    methods = sorted({a.method for a in arms if not a.method.startswith("local-")})
    for experiment, site in targets:
        curves = {}
        for method in methods:
            y, s = _pooled_prediction(arms, experiment, method, site)
            if len(y) and 0 < y.sum() < len(y):
                curves[method] = (y, s)
        if not curves:
            continue
        tag = _safe(f"{experiment}_{site}")
        band = CLINICAL_BASELINE if CLINICAL_BASELINE in curves else None
        what = f"{site} ({experiment}, seed {min(a.seed for a in arms if a.experiment == experiment)})"
        written.append(plot_roc(out_dir / f"roc_{tag}.png", curves, title=f"ROC, test {what}", band=band,
                                n_boot=200))
        written.append(plot_decision_curve(out_dir / f"decision_{tag}.png", curves, title=f"Decision curve, {what}"))
        written.append(plot_calibration(out_dir / f"calibration_{tag}.png", curves, title=f"Calibration, {what}",
                                        n_bins=5))
    rounds = _federated_rounds_plot(arms, out_dir / "federated_rounds.png")
    if rounds is not None:
        written.append(rounds)
    return written


def _federated_rounds_plot(arms: list[ArmResult], path: Path) -> Path | None:
    """Per-round pooled validation AUROC of every federated arm (None when no arm has rounds)."""
    fed = [a for a in arms if a.history]
    if not fed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for a in fed:
        pts = [(h.get("round"), h.get("val_auroc", h.get("pooled_val_auroc"))) for h in a.history]
        pts = [(r, v) for r, v in pts if r is not None and v is not None and np.isfinite(v)]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=f"{a.method} {a.experiment} s{a.seed}")
    ax.set(xlabel="round", ylabel="pooled validation AUROC (summed counts)", title="Federated training")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _safe(text: str) -> str:
    """File-name-safe tag."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
