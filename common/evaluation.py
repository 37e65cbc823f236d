"""Evaluation report directory for one model on one (held-out) site: metrics.json, predictions.csv,
report.md (MRP Table 1 layout) and figures. Runs AT the evaluating site; predictions.csv stays local.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.analysis.site_report import run_analyses
from common.analysis.subgroups import subgroup_table
from common.metrics import REPORT_METRICS, BootstrapConfig, binary_report, calibration, delong_ci, delong_test

_BOOT = BootstrapConfig()

_TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"), ("auprc", "AUPRC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
    ("ppv", "PPV"), ("npv", "NPV"), ("brier", "Brier"))


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _fmt(v: dict[str, float] | None, digits: int = 3) -> str:
    """``0.812 (0.760-0.857)``, or an em dash when undefined."""
    if v is None or v.get("value") is None or not np.isfinite(v["value"]):
        return "—"
    text = f"{v['value']:.{digits}f}"
    lo, hi = v.get("ci_low"), v.get("ci_high")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += f" ({lo:.{digits}f}–{hi:.{digits}f})"
    return text


def _p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _pick(primary: Any, alias: Any, names: str) -> Any:
    if primary is not None and alias is not None:
        raise TypeError(f"write_evaluation: give only one of {names}")
    return primary if primary is not None else alias


def write_evaluation(out_dir: str | Path, patient_ids: list[str] | None = None, y: np.ndarray | None = None,
                     scores: np.ndarray | None = None, threshold: float | None = None, *,
                     model_name: str | None = None, data_name: str | None = None,
                     reference_scores: dict[str, np.ndarray] | None = None,
                     reference_thresholds: dict[str, float] | None = None, threshold_rule: str | None = None,
                     n_boot: int = _BOOT.n_boot, seed: int = _BOOT.seed, manifest: pd.DataFrame | None = None,
                     clinical: pd.DataFrame | None = None, context: dict[str, Any] | None = None,
                     ids: list[str] | None = None, labels: np.ndarray | None = None, plots: bool = True) -> dict:
    """Write metrics.json, predictions.csv, report.md and ROC/PR/calibration/decision PNGs to ``out_dir``.

    ``threshold`` must have been chosen on validation data (``threshold_rule`` says how); it is applied
    unchanged. ``reference_scores`` (e.g. a clinical baseline, aligned with ``patient_ids``) are compared
    by DeLong; their threshold metrics are shown only when ``reference_thresholds`` supplies a validation
    threshold (none is ever picked on these patients). ``manifest``/``clinical`` add subgroup AUROCs.
    ``ids``/``labels`` are accepted as aliases of ``patient_ids``/``y``; ``context`` is stored verbatim.
    Returns the metrics.json content.
    """
    patient_ids = _pick(patient_ids, ids, "patient_ids / ids")
    y = _pick(y, labels, "y / labels")
    if patient_ids is None or y is None or scores is None or threshold is None:
        raise TypeError("write_evaluation needs patient_ids, y, scores and threshold")
    context = dict(context or {})
    model_name = model_name or Path(str(context.get("model", "model"))).name or "model"
    data_name = data_name or str(context.get("site", "data"))
    threshold_rule = threshold_rule or str(context.get("threshold_rule", "chosen on validation data"))
    ids_list, y, scores, references = _checked_inputs(patient_ids, y, scores, reference_scores)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    both = 0 < y.sum() < y.size

    report = binary_report(y, scores, float(threshold), n_boot=n_boot, seed=seed)
    result: dict[str, Any] = {"model": model_name, "data": data_name, **report,
                              "threshold": float(threshold), "threshold_rule": threshold_rule,
                              "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "ci": "95% percentile",
                                            "stratified": True}}
    result["auroc_delong"] = delong_ci(y, scores) if both else None
    cal = calibration(y, scores, n_bins=10)
    result["calibration"] = {k: cal[k] for k in ("slope", "intercept", "citl", "brier")}
    result["calibration"]["bins"] = pd.DataFrame({k: cal[k] for k in ("bin_low", "bin_high", "mean_predicted",
                                                                      "observed_rate", "count")}).to_dict("records")
    result["references"], result["delong"] = _reference_results(y, scores, references,
                                                                 dict(reference_thresholds or {}), n_boot, seed)
    analyses = run_analyses(out, ids_list, y, scores, manifest=manifest, clinical=clinical, n_boot=n_boot, seed=seed,
                            plots=plots)  # acquisition_audit.csv, subgroups.csv (+ PNGs): common/analysis
    unavailable = analyses.subgroups["status"].str.startswith("unavailable")
    result["subgroups"] = analyses.subgroups[~unavailable].to_dict("records")
    result["subgroups_unavailable"] = analyses.subgroups.loc[unavailable, "subgroup"].tolist()
    result["acquisition_audit"] = analyses.audit.to_dict("records")
    result["context"] = context

    pred = pd.DataFrame({"patient_id": ids_list, "label": y.astype(int), "score": scores,
                         "predicted": (scores >= float(threshold)).astype(int)})
    for name, ref in references.items():
        pred[f"score_{name}"] = ref
    pred.to_csv(out / "predictions.csv", index=False)

    curves = {model_name: (y, scores), **{n: (y, r) for n, r in references.items()}}
    result["figures"] = _figures(out, curves, model_name, f"{model_name} on {data_name}", float(threshold),
                                 n_boot, seed) if plots and both else {}
    result = _jsonable(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(_report_md(result) + "\n" + analyses.markdown)
    return result


def _checked_inputs(patient_ids: list[str], y: np.ndarray, scores: np.ndarray,
                    reference_scores: dict[str, np.ndarray] | None
                    ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """IDs, labels, scores and reference scores as flat arrays; mismatched lengths or duplicate IDs raise."""
    ids_list = [str(i) for i in patient_ids]
    y = np.asarray(y, dtype=float).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if not (len(ids_list) == y.size == scores.size):
        raise ValueError(f"patient_ids ({len(ids_list)}), y ({y.size}) and scores ({scores.size}) differ in length")
    if len(set(ids_list)) != len(ids_list):
        dup = pd.Series(ids_list)[pd.Series(ids_list).duplicated()].iloc[0]
        raise ValueError(f"duplicate patient id {dup!r} in the evaluation set")
    references = {str(k): np.asarray(v, dtype=float).ravel() for k, v in (reference_scores or {}).items()}
    for name, ref in references.items():
        if ref.size != y.size:
            raise ValueError(f"reference {name!r} has {ref.size} scores for {y.size} patients")
    return ids_list, y, scores, references


def _reference_results(y: np.ndarray, scores: np.ndarray, references: dict[str, np.ndarray],
                       ref_thr: dict[str, float], n_boot: int, seed: int) -> tuple[dict, dict]:
    """Per reference: its report (threshold metrics only at a validation threshold) and DeLong vs the model."""
    both = 0 < y.sum() < y.size
    reports, delong = {}, {}
    for name, ref in references.items():
        # threshold metrics only at a validation threshold; otherwise +inf leaves them out of the table
        rep = binary_report(y, ref, float(ref_thr.get(name, np.inf)), n_boot=n_boot, seed=seed)
        if name not in ref_thr:
            for k in ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"):
                rep[k] = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}
        reports[name] = {**rep, "threshold": ref_thr.get(name)}
        delong[name] = delong_test(y, scores, ref) if both else None
    return reports, delong


def _figures(out: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], model_name: str, where: str,
             threshold: float, n_boot: int, seed: int) -> dict[str, str]:
    """ROC (with the model's bootstrap band), PR, calibration and decision-curve PNGs; returns their names."""
    from common import plots as P

    return {
        "roc": P.plot_roc(out / "roc.png", curves, title=f"ROC: {where}", band=model_name, threshold=threshold,
                          n_boot=n_boot, seed=seed).name,
        "pr": P.plot_pr(out / "pr.png", curves, title=f"Precision-recall: {where}").name,
        "calibration": P.plot_calibration(out / "calibration.png", curves, title=f"Calibration: {where}").name,
        "decision_curve": P.plot_decision_curve(out / "decision_curve.png", curves,
                                                title=f"Decision curve: {where}").name,
    }


def _report_md(r: dict[str, Any]) -> str:
    """Markdown report: MRP-style Table 1 (rows = models), DeLong, calibration, figures (analyses follow)."""
    def none_nan(d: dict | None) -> dict | None:
        return None if d is None else {k: (math.nan if v is None else v) for k, v in d.items()}

    n, n_pos = int(r["n"]["value"]), int(r["n_pos"]["value"])
    lines = [f"# pCR evaluation: {r['model']} on {r['data']}", "",
             f"- Patients: n = {n}, pCR = {n_pos} (prevalence {100 * (r['prevalence']['value'] or 0):.1f}%)",
             f"- Operating threshold: {r['threshold']:.4f} — {r['threshold_rule']}; chosen on validation data "
             "and applied unchanged here (positive iff score >= threshold).",
             f"- 95% CIs: stratified bootstrap ({r['bootstrap']['n_boot']} resamples, seed {r['bootstrap']['seed']}, "
             "positives and negatives resampled separately, percentile interval).",
             ""]
    if r.get("auroc_delong"):
        d = r["auroc_delong"]
        lines.append(f"- AUROC DeLong SE {d['se']:.3f}, 95% CI {d['ci_low']:.3f}–{d['ci_high']:.3f}.")
        lines.append("")
    header = ["Model"] + [label + (" (95% CI)" if k == "auroc" else "") for k, label in _TABLE_METRICS] + \
        ["DeLong p vs " + r["model"]]
    lines += ["## Table 1. Performance", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(r["model"], r, None)] + [(name, rep, (r.get("delong") or {}).get(name))
                                      for name, rep in (r.get("references") or {}).items()]
    for name, rep, dl in rows:
        cells = [name] + [_fmt(none_nan(rep.get(k))) for k, _ in _TABLE_METRICS]
        cells.append(_p(None if dl is None else dl.get("p")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Threshold metrics of comparison models are shown only when they came with their own "
              "validation threshold (never chosen on these patients).", ""]
    if r.get("delong"):
        lines += ["## DeLong comparisons (paired, same patients)", "",
                  "| Comparison | AUROC model | AUROC reference | Difference (95% CI) | z | p |", "|---|---|---|---|---|---|"]
        for name, d in r["delong"].items():
            if d is None:
                lines.append(f"| {r['model']} vs {name} | — | — | — | — | — |")
                continue
            lines.append(f"| {r['model']} vs {name} | {d['auc1']:.3f} | {d['auc2']:.3f} | {d['difference']:+.3f} "
                         f"({d['diff_ci_low']:+.3f} to {d['diff_ci_high']:+.3f}) | {d['z']:.2f} | {_p(d['p'])} |")
        lines.append("")
    c = r["calibration"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    lines += ["## Calibration", "",
              f"Calibration slope {fmt(c['slope'])}, intercept {fmt(c['intercept'])} (logistic fit on logit(score)); "
              f"calibration-in-the-large {fmt(c['citl'])}; Brier {fmt(c['brier'])}. Ideal: slope 1, intercept 0.", ""]
    if r.get("figures"):
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in r["figures"].items()] + [""]
    return "\n".join(lines)


__all__ = ["REPORT_METRICS", "subgroup_table", "write_evaluation"]
