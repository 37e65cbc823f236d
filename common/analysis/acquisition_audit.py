"""Acquisition-parameter audit (Braman et al.): does the predicted score follow the scanner?

Spearman rank correlation of the score with each numeric acquisition parameter, a rank test of the
score across vendors and scanner models, Benjamini-Hochberg over every test run. Parameters are read
from the cache manifest (docs/CONTRACTS.md section 2); what the manifest lacks is reported as
unavailable, with the DICOM tag a later manifest should carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

AUDIT_COLUMNS = ("parameter", "kind", "test", "n", "rho", "statistic", "p", "p_fdr", "status", "note")


@dataclass(frozen=True)
class Parameter:
    """One audited acquisition parameter: manifest column, numeric or categorical, DICOM source."""

    name: str
    column: str
    kind: str  # "numeric" | "categorical"
    dicom: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("repetition_time", "repetition_time", "numeric", "RepetitionTime (0018,0080)"),
    Parameter("echo_time", "echo_time", "numeric", "EchoTime (0018,0081)"),
    Parameter("flip_angle", "flip_angle", "numeric", "FlipAngle (0018,1314)"),
    Parameter("field_strength", "field_strength", "numeric", "MagneticFieldStrength (0018,0087)"),
    Parameter("slice_thickness", "slice_thickness", "numeric", "SliceThickness (0018,0050)"),
    Parameter("pixel_spacing", "pixel_spacing", "numeric", "PixelSpacing (0028,0030), in-plane"),
    Parameter("n_phases", "n_phases", "numeric", "number of DCE phases found"),
    Parameter("temporal_resolution", "temporal_resolution", "numeric",
              "seconds per DCE phase: TemporalResolution (0020,0110) or TriggerTime (0018,1060) differences"),
    Parameter("manufacturer", "manufacturer", "categorical", "Manufacturer (0008,0070)"),
    Parameter("model", "model", "categorical", "ManufacturerModelName (0008,1090)"),
)
#: Fewest patients with a value for a test to be run.
MIN_AUDIT_N = 5


def _median_interval(phase_times: object) -> float:
    """Median interval (s) between consecutive post-contrast phases of a ``;``-separated time list."""
    try:
        t = np.array([float(v) for v in str(phase_times).split(";") if v.strip() != ""])
    except ValueError:
        return float("nan")
    post = t[1:]
    return float(np.median(np.diff(post))) if post.size >= 2 else float("nan")


def derived_parameters(manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-patient parameter values (rows of ``manifest``) and, per parameter, where the value came from
    or why it is unavailable."""
    out = pd.DataFrame(index=manifest.index)
    source: dict[str, str] = {}
    for p in PARAMETERS:
        if p.column in manifest.columns and manifest[p.column].notna().any():
            out[p.name] = manifest[p.column]
            source[p.name] = f"manifest column '{p.column}'"
        elif p.name == "n_phases" and "phases" in manifest.columns:
            out[p.name] = [len(str(v).split(";")) if pd.notna(v) else np.nan for v in manifest["phases"]]
            source[p.name] = "counted from manifest column 'phases'"
        elif p.name == "temporal_resolution" and "phase_times" in manifest.columns:
            out[p.name] = [_median_interval(v) for v in manifest["phase_times"]]
            source[p.name] = "median interval between consecutive post-contrast phase times ('phase_times')"
        else:
            source[p.name] = f"unavailable: the manifest has no '{p.column}' column (add it from {p.dicom})"
    return out, source


def _numeric_test(values: pd.Series, scores: np.ndarray) -> dict[str, object]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(scores)
    row: dict[str, object] = {"kind": "numeric", "test": "Spearman", "n": int(keep.sum())}
    if keep.sum() < MIN_AUDIT_N:
        return {**row, "status": "too few", "note": f"fewer than {MIN_AUDIT_N} patients with a value"}
    if np.unique(x[keep]).size < 2:
        return {**row, "status": "constant", "note": f"one value at this site ({x[keep][0]:g})"}
    res = stats.spearmanr(x[keep], scores[keep])
    return {**row, "rho": float(res.statistic), "p": float(res.pvalue), "status": "tested",
            "note": f"{np.unique(x[keep]).size} distinct values"}


def _categorical_test(values: pd.Series, scores: np.ndarray) -> dict[str, object]:
    keep = values.notna().to_numpy() & np.isfinite(scores) & (values.astype(str).str.strip() != "").to_numpy()
    levels = values[keep].astype(str)
    groups = [scores[keep][(levels == lv).to_numpy()] for lv in sorted(levels.unique())]
    row: dict[str, object] = {"kind": "categorical", "n": int(keep.sum())}
    if keep.sum() < MIN_AUDIT_N:
        return {**row, "test": "", "status": "too few", "note": f"fewer than {MIN_AUDIT_N} patients with a value"}
    note = ", ".join(f"{lv} (n={g.size})" for lv, g in zip(sorted(levels.unique()), groups))
    if len(groups) < 2:
        return {**row, "test": "", "status": "constant", "note": f"one level at this site: {note}"}
    if len(groups) == 2:
        res = stats.mannwhitneyu(groups[0], groups[1], alternative="two-sided")
        test = "Mann-Whitney U"
    else:
        res = stats.kruskal(*groups)
        test = "Kruskal-Wallis H"
    return {**row, "test": test, "statistic": float(res.statistic), "p": float(res.pvalue), "status": "tested",
            "note": note}


def acquisition_audit(scores: np.ndarray, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`PARAMETERS` entry (columns :data:`AUDIT_COLUMNS`); ``scores`` align with the
    manifest rows. ``p_fdr`` is Benjamini-Hochberg over the tests actually run (scipy)."""
    scores = np.asarray(scores, dtype=float).ravel()
    if scores.size != len(manifest):
        raise ValueError(f"acquisition audit: {scores.size} scores for {len(manifest)} manifest rows")
    values, source = derived_parameters(manifest)
    rows = []
    for p in PARAMETERS:
        if p.name not in values.columns:
            rows.append({"parameter": p.name, "kind": p.kind, "test": "", "n": 0, "status": "unavailable",
                         "note": source[p.name]})
            continue
        test = _numeric_test if p.kind == "numeric" else _categorical_test
        row = test(values[p.name], scores)
        row["note"] = f"{row['note']}; {source[p.name]}" if p.name in ("n_phases", "temporal_resolution") else row["note"]
        rows.append({"parameter": p.name, **row})
    frame = pd.DataFrame(rows).reindex(columns=list(AUDIT_COLUMNS))
    tested = frame["status"].eq("tested").to_numpy()
    if tested.any():
        frame.loc[tested, "p_fdr"] = stats.false_discovery_control(frame.loc[tested, "p"].to_numpy(float), method="bh")
    return frame


def audit_markdown(frame: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """Report section: the audit table and a one-line verdict."""
    lines = ["## Acquisition-parameter audit", "",
             "Rank association of the predicted score with each acquisition parameter (Spearman rho; vendor and "
             "model by a rank test across levels), Benjamini-Hochberg adjusted over the tests run. A model that "
             "reads the scanner rather than the tumour shows significant rows here.", "",
             "| Parameter | Test | n | rho | statistic | p | p (BH) | Note |", "|---|---|---|---|---|---|---|---|"]
    num = lambda v, d=3: "—" if pd.isna(v) else f"{v:.{d}f}"  # noqa: E731
    pv = lambda v: "—" if pd.isna(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")  # noqa: E731
    for r in frame.itertuples():
        test = r.test if r.status == "tested" else r.status
        lines.append(f"| {r.parameter} | {test} | {r.n} | {num(r.rho)} | {num(r.statistic, 2)} | {pv(r.p)} | "
                     f"{pv(r.p_fdr)} | {r.note} |")
    sig = frame[frame["p_fdr"].astype(float) < alpha]["parameter"].tolist()
    lines += ["", f"Significant after BH at {alpha}: {', '.join(sig) if sig else 'none'}.", ""]
    return lines


__all__ = ["AUDIT_COLUMNS", "PARAMETERS", "acquisition_audit", "audit_markdown", "derived_parameters"]
