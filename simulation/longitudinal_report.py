"""The longitudinal experiment's report section: held-out AUROC by visit set (table + figure), DeLong
against clinical-only, and the published anchors beside them. Built from the arms' tidy rows only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulation.arm_result import ArmResult, results_frame
from simulation.summaries import md_table


def visit_summary(arms: list[ArmResult]) -> pd.DataFrame:
    """Held-out rows per (held-out site, base method, visit set): mean AUROC over seeds, mean CI bounds,
    mean DeLong difference vs clinical-only and the median DeLong p (local models: mean over sites)."""
    frame = results_frame(arms)
    frame = frame[frame["experiment"].str.startswith("heldout-")]
    frame = frame[frame["test_site"] == frame["experiment"].str.removeprefix("heldout-")]
    frame = frame.assign(base=frame["method"].str.split("@").str[0].where(
        ~frame["method"].str.startswith("local-"), "local (mean of sites)"),
        visit=frame["method"].str.split("@").str[1])
    out = []
    for (site, base, visit), g in frame.groupby(["test_site", "base", "visit"], sort=False):
        auc = g[g["metric"] == "auroc"]
        diff = g[g["metric"] == "auroc_diff_vs_clinical"]
        p = g[g["metric"] == "delong_p_vs_clinical"]
        out.append({"test_site": site, "method": base, "visit_set": visit, "n_arms": len(auc),
                    "auroc": auc["value"].mean(), "ci_low": auc["ci_low"].mean(), "ci_high": auc["ci_high"].mean(),
                    "diff_vs_clinical": diff["value"].mean() if len(diff) else np.nan,
                    "delong_p": p["value"].median() if len(p) else np.nan})
    return pd.DataFrame(out)


def plot_by_visit(summary: pd.DataFrame, visit_sets: tuple[str, ...], path: Path) -> Path:
    """AUROC (95 % CI) by visit set, one panel per held-out site, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted(summary["test_site"].unique())
    fig, axes = plt.subplots(1, max(1, len(sites)), figsize=(5 * max(1, len(sites)), 4), squeeze=False)
    x = np.arange(len(visit_sets))
    for ax, site in zip(axes[0], sites):
        part = summary[summary["test_site"] == site]
        for k, (method, g) in enumerate(part.groupby("method")):
            g = g.set_index("visit_set").reindex(list(visit_sets))
            off = (k - 1) * 0.06
            ax.errorbar(x + off, g["auroc"], yerr=[g["auroc"] - g["ci_low"], g["ci_high"] - g["auroc"]],
                        marker="o", capsize=3, label=method)
        ax.set_xticks(x, list(visit_sets))
        ax.set_ylim(0.3, 1.0)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_title(f"held-out site {site} (real I-SPY2)")
        ax.set_xlabel("inputs (cumulative visits)")
        ax.set_ylabel("AUROC (mean over seeds, 95 % CI)")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_longitudinal_section(arms: list[ArmResult], out_dir: Path, report: Path, visit_sets: tuple[str, ...],
                               anchors: dict[str, float]) -> Path:
    """Append the "AUROC by visit set" section to ``report``; write ``visit_summary.csv`` and the figure."""
    summary = visit_summary(arms)
    summary.to_csv(out_dir / "visit_summary.csv", index=False)
    fig = plot_by_visit(summary, visit_sets, out_dir / "plots" / "auroc_by_visit.png")

    def fmt(v: float, d: int = 3) -> str:
        return "n/a" if pd.isna(v) else f"{v:.{d}f}"

    body = [[r.test_site, r.method, r.visit_set, str(r.n_arms), f"{fmt(r.auroc)} ({fmt(r.ci_low)}-{fmt(r.ci_high)})",
             fmt(r.diff_vs_clinical), fmt(r.delong_p)] for r in summary.itertuples()]
    lines = ["", "## AUROC by visit set (held-out I-SPY2 sites)", "",
             "Each held-out site never trained. Visit sets are cumulative: `clinical` = HR + HER2; `t0` adds "
             "pre-treatment tumour volume, longest diameter, sphericity and BPE; `t0-t1` adds their change to the "
             "early-treatment MRI (~3 weeks); `t0-t2` adds the change to the inter-regimen MRI (~12 weeks). "
             "DeLong compares each visit set with the same method's clinical-only model on the same patients "
             "(difference: mean over seeds; p: median over seeds).", "",
             md_table(["held-out site", "method", "visit set", "arms", "AUROC (95 % CI)", "diff vs clinical",
                       "DeLong p"], body), "",
             "Published figures for comparison: " + "; ".join(f"{k}: {v:.3f}" for k, v in anchors.items()) + ".",
             "The 5-fold CV figures pool all sites (internal validation); ours are at sites that never trained, "
             "so lower values are expected.", "",
             f"![AUROC by visit set]({fig.relative_to(out_dir).as_posix()})", ""]
    with report.open("a") as fh:
        fh.write("\n".join(lines))
    return report
