"""The analyses of ``fedpcr evaluate`` as files and report sections: acquisition_audit.csv/.png,
subgroups.csv + forest plot, explanations/<patient>.png + explanations.csv (with localisation figures
when tumour boxes are known). Everything stays at the evaluating site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.analysis.acquisition_audit import acquisition_audit, audit_markdown
from common.analysis.subgroups import subgroup_attributes, subgroup_table, subgroups_markdown
from common.metrics import auroc


@dataclass
class SiteAnalyses:
    """Tables written and the report sections describing them."""

    audit: pd.DataFrame
    subgroups: pd.DataFrame
    markdown: str


def run_analyses(out: str | Path, ids: list[str], y: np.ndarray, scores: np.ndarray, *,
                 manifest: pd.DataFrame | None, clinical: pd.DataFrame | None, n_boot: int = 1000, seed: int = 0,
                 plots: bool = True) -> SiteAnalyses:
    """Write acquisition_audit.csv and subgroups.csv (+ PNGs) to ``out``; return them and their markdown."""
    from common.analysis.plots import plot_audit, plot_forest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in ids]
    y = np.asarray(y, float).ravel()
    scores = np.asarray(scores, float).ravel()
    lines: list[str] = []
    audit = pd.DataFrame()
    if manifest is not None:
        man = manifest.set_index("patient_id", drop=False) if "patient_id" in manifest.columns else manifest
        man = man[~man.index.astype(str).duplicated()]
        man.index = man.index.astype(str)
        audit = acquisition_audit(scores, man.reindex(ids))
        audit.to_csv(out / "acquisition_audit.csv", index=False)
        fig = None
        if plots and audit["status"].eq("tested").any():
            fig = plot_audit(out / "acquisition_audit.png", audit, title="Predicted score vs acquisition").name
        lines += audit_markdown(audit) + ([f"![Acquisition audit]({fig})", ""] if fig else [])
    groups = subgroup_attributes(ids, manifest, clinical)
    sub = subgroup_table(y, scores, groups, n_boot=n_boot, seed=seed)
    sub.to_csv(out / "subgroups.csv", index=False)
    forest = None
    if plots and sub["auroc"].notna().any():
        forest = plot_forest(out / "subgroups_forest.png", sub, title="AUROC by subgroup",
                             overall=auroc(y, scores) if 0 < y.sum() < y.size else None).name
    lines += subgroups_markdown(sub, forest)
    return SiteAnalyses(audit, sub, "\n".join(lines) + "\n")


def choose_patients(ids: list[str], scores: np.ndarray, n: int = 0, named: list[str] | None = None) -> list[str]:
    """The ``n`` highest- and ``n`` lowest-scored patients plus the named ones (unknown names raise)."""
    unknown = [p for p in named or [] if p not in set(ids)]
    if unknown:
        raise ValueError(f"--explain-patients: {unknown} are not among the evaluated patients")
    order = [ids[k] for k in np.argsort(-np.asarray(scores, float), kind="stable")]
    picked = order[:n] + order[::-1][:n] if n > 0 else []
    return list(dict.fromkeys([*picked, *(named or [])]))


def _safe(pid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", pid)


def write_explanations(out: str | Path, model: Any, cache: Any, patients: list[str], labels: dict[str, float], *,
                       clinical_features: tuple[str, ...], boxes: dict[str, tuple] | None = None,
                       threshold: float = 0.5) -> tuple[pd.DataFrame, str]:
    """explanations/<patient>.png and explanations.csv for ``patients`` of ``cache``; with ``boxes`` (cache
    coordinates) each row carries the localisation figures. Returns the table and its report section."""
    from common.analysis.explain import ExplainConfig, explain_one, localisation, write_panel
    from common.data import PCRDataset

    cfg = ExplainConfig()
    edir = Path(out) / "explanations"
    edir.mkdir(parents=True, exist_ok=True)
    ds = PCRDataset(cache, patients, augment=False, clinical_features=clinical_features)
    rows = []
    for k, pid in enumerate(patients):
        item = ds[k]
        exp = explain_one(model, item, pid, cfg, threshold)
        box = (boxes or {}).get(pid)
        png = write_panel(edir / f"{_safe(pid)}.png", exp, np.asarray(item["image"]), tuple(ds.channels),
                          label=labels.get(pid), box=box)
        row: dict[str, Any] = {"patient_id": pid, "score": exp.score, "label": labels.get(pid), "png": png.name,
                               "gradcam_layer": exp.gradcam_layer, "gradcam_class": exp.gradcam_class,
                               "ig_delta": exp.ig_delta}
        if exp.ig_clinical is not None:
            top = exp.ig_clinical.abs().sort_values(ascending=False).index[:3]
            row["top_clinical"] = "; ".join(f"{v} {exp.ig_clinical[v]:+.3f}" for v in top)
        if box is not None:
            row.update(localisation(exp, box, cfg.pointing_tolerance))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(out) / "explanations.csv", index=False)
    return frame, explanations_markdown(frame, cfg)


def explanations_markdown(frame: pd.DataFrame, cfg: Any = None) -> str:
    """Report section: what was explained, how, and (with boxes) how much attribution lies in the tumour."""
    from common.analysis.explain import ExplainConfig

    cfg = cfg or ExplainConfig()
    layer = str(frame["gradcam_layer"].iloc[0]).split(".")[-1] if len(frame) else "—"
    lines = ["## Explanations", "",
             f"Grad-CAM (MONAI `GradCAM` of the predicted class at the operating threshold, at encoder stage `{layer}`, "
             "the deepest with a map of >= "
             f"{cfg.gradcam_min_size} voxels per axis) and Integrated Gradients (Captum, {cfg.ig_steps} steps, baseline "
             f"= the image Gaussian-blurred by {cfg.ig_baseline_sigma:g} voxels; clinical baseline = encoded value 0) on "
             "the image; Integrated Gradients per clinical variable beside it. One figure per patient in "
             f"`explanations/`; median |convergence delta| {frame['ig_delta'].abs().median():.4f} (logit units).", "",
             "| Patient | Score | Outcome | Grad-CAM of | Figure | Strongest clinical attributions |",
             "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        outcome = "—" if pd.isna(r.label) else ("pCR" if r.label == 1 else "no pCR")
        lines.append(f"| {r.patient_id} | {r.score:.3f} | {outcome} | {r.gradcam_class} | [png](explanations/{r.png}) | "
                     f"{getattr(r, 'top_clinical', '') or ''} |")
    lines.append("")
    if "box_volume_share" in frame.columns:
        s = localisation_summary(frame)
        lines += ["### Attribution inside the known tumour box", "",
                  f"Over {s['n']} patients with a known box (box = {100 * s['box_volume_share']:.1f}% of the volume on "
                  "average, the chance level of both figures):", "",
                  "| Method | Share of attribution inside the box (mean, median) | Pointing-game hit rate |",
                  "|---|---|---|"]
        for m, name in (("gradcam", "Grad-CAM"), ("ig", "Integrated Gradients (absolute, summed over channels)")):
            if f"{m}_energy_in_box" in frame.columns:
                lines.append(f"| {name} | {s[m + '_energy_mean']:.3f}, {s[m + '_energy_median']:.3f} | "
                             f"{s[m + '_pointing']:.3f} (of {s[m + '_n']} non-empty maps) |")
        lines.append("")
    return "\n".join(lines) + "\n"


def explain_into_report(out: str | Path, bundle: Any, cache: Any, ids: list[str], labels: np.ndarray,
                        scores: np.ndarray, *, n: int = 0, named: list[str] | None = None, truth: str | Path | None = None,
                        train_config: Any = None) -> pd.DataFrame:
    """``fedpcr evaluate --explain``: explain the chosen patients with the bundle's model on its device and
    append the section to ``out/report.md``. ``truth`` (embedded cohort truth.csv) adds localisation."""
    from common.analysis.tumour_box import boxes_from_truth
    from common.train import select_device

    patients = choose_patients(ids, scores, n, named)
    boxes = boxes_from_truth(truth, patients, cache.prep_config) if truth else None
    model = bundle.model.to(select_device(train_config or bundle.train_config))
    frame, md = write_explanations(out, model, cache, patients, dict(zip(ids, np.asarray(labels, float))),
                                   clinical_features=tuple(bundle.model_config.clinical_features), boxes=boxes,
                                   threshold=float(bundle.threshold))
    report = Path(out) / "report.md"
    report.write_text((report.read_text() if report.is_file() else "") + "\n" + md)
    return frame


def localisation_summary(frame: pd.DataFrame) -> dict[str, float]:
    """Mean/median in-box attribution share and pointing-game hit rate over the patients with a box."""
    f = frame[frame["box_volume_share"].notna()] if "box_volume_share" in frame.columns else frame.iloc[:0]
    out: dict[str, float] = {"n": int(len(f)), "box_volume_share": float(f["box_volume_share"].mean()) if len(f) else np.nan}
    for m in ("gradcam", "ig"):
        if f"{m}_energy_in_box" in f.columns:
            out[f"{m}_energy_mean"] = float(f[f"{m}_energy_in_box"].mean())
            out[f"{m}_energy_median"] = float(f[f"{m}_energy_in_box"].median())
            out[f"{m}_pointing"] = float(f[f"{m}_pointing_hit"].mean())
            out[f"{m}_n"] = int(f[f"{m}_pointing_hit"].notna().sum())
    return out


__all__ = ["SiteAnalyses", "choose_patients", "explain_into_report", "explanations_markdown", "localisation_summary", "run_analyses",
           "write_explanations"]
