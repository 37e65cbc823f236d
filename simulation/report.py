"""Experiment results -> ``results.csv``, ``cross_site.json``, ``config.json``, ``versions.json``, plots and
``report.md``.

The tables come from ``simulation.summaries``, the figures from ``simulation.report_plots``, the rows from
``simulation.arm_result``; this module assembles them into the report. Nothing here trains anything.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.analysis.subgroups import heldout_section
from simulation.arm_result import (  # evaluate_predictions, metric_rows: re-exported for clinical_experiment
    POOLED,
    ArmResult,
    evaluate_predictions,
    json_default,
    metric_rows,
    results_frame,
    write_results_csv,
)
from common.paired_bootstrap import DEFAULT_N_BOOT
from simulation.heldout_compare import SEMI_SYNTHETIC_GAP, TARGET_GAP, comparison_section, heldout_comparisons
from simulation.report_plots import write_plots
from simulation.summaries import (
    CLINICAL_BASELINE,
    cross_site,
    delong_table,
    fmt_num,
    fmt_p,
    heldout_site,
    heldout_summary,
    md_table,
    site_matrix,
    table_one,
)

#: Libraries whose versions are written next to every report.
LIBRARIES: tuple[str, ...] = ("numpy", "pandas", "scipy", "sklearn", "torch", "monai", "flwr", "SimpleITK",
                              "pydicom", "matplotlib")


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries that produced the numbers."""
    from importlib import import_module

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = str(getattr(import_module(name), "__version__", "?"))
        except Exception:  # noqa: BLE001 - a missing optional library is reported as such
            out[name] = "not installed"
    return out


def write_report(arms: list[ArmResult], out_dir: Path, *, title: str, config: dict[str, Any],
                 semi_synthetic: bool, notes: list[str] | None = None, n_boot: int | None = None,
                 pooled_method: str | None = None) -> Path:
    """Write results.csv, cross_site.json, config.json, versions.json, heldout_comparisons.csv, plots/ and
    report.md; return report.md. ``n_boot``: resamples behind the CIs (stated in the summary, and used for the
    paired federated-vs-pooled/local differences, at least :data:`DEFAULT_N_BOOT`); ``pooled_method``: the
    centralised arm federated arms are compared with (default ``pooled`` when present, else ``clinical-lr``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = sorted(arms, key=lambda a: (a.experiment, a.method, a.seed))
    write_results_csv(arms, out_dir / "results.csv")
    (out_dir / "cross_site.json").write_text(json.dumps(cross_site(arms), indent=1, default=json_default))
    versions = library_versions()
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, default=json_default))
    (out_dir / "versions.json").write_text(json.dumps(versions, indent=1))
    plots = write_plots(arms, out_dir / "plots")
    frame = results_frame(arms)
    methods = {a.method for a in arms}
    pooled = pooled_method or ("pooled" if "pooled" in methods else CLINICAL_BASELINE)
    comp = heldout_comparisons(arms, pooled, n_boot=max(n_boot or 0, DEFAULT_N_BOOT))
    if not comp.empty:
        comp.to_csv(out_dir / "heldout_comparisons.csv", index=False)
    lines = [f"# {title}", ""]
    lines += _data_banner(semi_synthetic)
    lines += _summary_section(arms, frame, notes or [], n_boot)
    lines += _heldout_section(frame)
    lines += comparison_section(comp, pooled, SEMI_SYNTHETIC_GAP if semi_synthetic else TARGET_GAP)
    lines += _table_one_section(frame, sorted({a.experiment for a in arms}))
    lines += _delong_section(arms)
    lines += _federated_section(arms)
    arm_notes = sorted({n for a in arms for n in a.notes})
    if arm_notes:
        lines += ["## Methods notes", ""] + [f"- {n}" for n in arm_notes] + [""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})", ""]
    lines.append(heldout_section(arms, config.get("caches"), out_dir, heldout_site))  # subgroups per held-out site
    lines += ["## Configuration", "", "```json", json.dumps(config, indent=1, default=json_default), "```", "",
              "## Library versions", "", md_table(["library", "version"], [[k, v] for k, v in versions.items()]), ""]
    lines += [f"_Compute time summed over arms: {sum(a.seconds for a in arms):.1f} s._", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- report.md sections


def _data_banner(semi_synthetic: bool) -> list[str]:
    """What the numbers are: semi-synthetic pipeline checks, or real data."""
    if semi_synthetic:
        return ["> **SEMI-SYNTHETIC DATA.** Images come from the embedded generated cohort (real DICOM, synthetic",
                "> voxels with a planted signal). These numbers test the pipeline and compare arms on a known",
                "> signal; they are NOT clinical performance estimates.", ""]
    return ["> Real data: numbers below are measured on the public tables / collections named in the configuration.",
            ""]


def _summary_section(arms: list[ArmResult], frame: pd.DataFrame, notes: list[str],
                     n_boot: int | None = None) -> list[str]:
    seeds = sorted({a.seed for a in arms})
    boot = f"stratified bootstrap 95 % intervals ({n_boot} resamples)" if n_boot else "bootstrap 95 % intervals"
    lines = ["## Summary", "",
             f"- experiments: {', '.join(sorted({a.experiment for a in arms}))}",
             f"- methods: {', '.join(sorted({a.method for a in arms}))}",
             f"- seeds: {', '.join(map(str, seeds))}; values are means over seeds, CIs are {boot} averaged over "
             "seeds",
             f"- rows: {len(frame)} in `results.csv`; cross-site matrix in `cross_site.json`", ""]
    lines += [f"- {note}" for note in notes]
    return lines + ([""] if notes else [])


def _heldout_section(frame: pd.DataFrame) -> list[str]:
    hs = heldout_summary(frame)
    if hs.empty:
        return []
    site_cols = [c for c in hs.columns if c not in ("method", "mean", "worst", "worst_site")]
    body = [[str(r["method"])] + [fmt_num(r[c]) for c in site_cols]
            + [fmt_num(r["mean"]), fmt_num(r["worst"]), str(r["worst_site"])] for _, r in hs.iterrows()]
    return ["## Held-out institutions (AUROC; never used for training, model selection, thresholds or "
            "normalisation)", "", md_table(["method"] + site_cols + ["mean", "worst", "worst site"], body), ""]


def _table_one_section(frame: pd.DataFrame, experiments: list[str]) -> list[str]:
    lines = ["## Table 1 — held-out institution and pooled internal test set (mean over seeds, 95 % CI)", ""]
    for exp in experiments:
        part = frame[frame["experiment"] == exp]
        held = heldout_site(exp)
        for site in [s for s in (held, POOLED) if s and s in set(part["test_site"])]:
            label = "held-out institution" if site == held else "pooled internal test split"
            lines += [f"### {exp} — test: {site} ({label})", "", table_one(frame, exp, site), ""]
        lines += [f"#### {exp} — AUROC on each training site's internal test split", "",
                  site_matrix(part, exclude=(held, POOLED)), ""]
    return lines


def _delong_section(arms: list[ArmResult]) -> list[str]:
    dl = delong_table(arms)
    lines = [f"## DeLong tests against the clinical baseline (`{CLINICAL_BASELINE}`)", ""]
    if dl.empty:
        return lines + ["_no comparable baseline predictions_", ""]
    agg = dl.groupby(["experiment", "test_site", "method"]).agg(
        auroc=("auroc", "mean"), auroc_baseline=("auroc_baseline", "mean"), p=("p", "max"),
        n=("n", "max"), seeds=("seed", "nunique")).reset_index()
    agg = agg[[s in (heldout_site(e), POOLED) for e, s in zip(agg["experiment"], agg["test_site"])]]
    body = [[r.experiment, r.test_site, r.method, fmt_num(r.auroc), fmt_num(r.auroc_baseline), fmt_p(r.p),
             str(int(r.n)), str(int(r.seeds))] for r in agg.itertuples()]
    return lines + [md_table(["experiment", "test set", "method", "AUROC", "baseline AUROC", "p (max over seeds)",
                              "n", "seeds"], body), ""]


def _federated_section(arms: list[ArmResult]) -> list[str]:
    fed = [a for a in arms if a.history]
    if not fed:
        return []
    body = []
    for a in fed:
        vals = [(h.get("val_auroc", h.get("pooled_val_auroc")), h.get("val_auroc_bound",
                                                                      h.get("pooled_val_auroc_bound")))
                for h in a.history]
        vals = [(v, b) for v, b in vals if v is not None and np.isfinite(v)]
        last_bound = vals[-1][1] if vals and vals[-1][1] is not None else math.nan
        body.append([a.experiment, a.method, str(a.seed), str(sum(1 for h in a.history if h.get("round", 0) > 0)),
                     fmt_num(vals[-1][0] if vals else math.nan),
                     f"{last_bound:.1e}" if np.isfinite(last_bound) else "n/a",
                     fmt_num(max(v for v, _ in vals) if vals else math.nan)])
    return ["## Federated training (per-round pooled validation AUROC from summed counts)", "",
            "The server never sees a patient's score: the pooled AUROC is the trapezoid through the summed "
            "threshold counts. Its exact worst-case error against the per-patient AUROC (only positive/negative "
            "pairs inside one grid cell can be misordered: sum_k pos_k neg_k / (2 n_pos n_neg), "
            "`common.metrics_counts.auroc_error_bound_from_counts`) is printed as +/- bound.", "",
            md_table(["experiment", "method", "seed", "rounds", "last", "+/- bound (last)", "best"], body), ""]


__all__ = ["LIBRARIES", "POOLED", "ArmResult", "evaluate_predictions", "library_versions", "metric_rows",
           "write_report"]
