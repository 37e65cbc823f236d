"""Real I-SPY2 longitudinal MRI measurements joined to pCR, receptors and trial site, as model inputs.

Sources (all public, shipped in ``data/``): ``Multi-feature-MRI-NACT-Data.xlsx`` (384 I-SPY2 patients:
functional tumour volume, longest diameter, sphericity and background parenchymal enhancement at T0-T3
and their percent changes), the I-SPY2 TCIA clinical workbook (pCR, HR, HER2) and the MAMA-MIA table
(trial-site code of every I-SPY2 patient). Feature transforms are FIXED (log, clipping, constant scales):
no statistic is estimated from any patient, so nothing from a held-out site reaches training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.paths import ISPY2_CLINICAL, ISPY2_MRI_FEATURES, MAMA_MIA_TABLE
from common.patient_id import collection_of, id_key
from simulation.clinical_experiment import ClinicalData

#: Visit sets, cumulative: each adds the named visit's measurements to the previous set.
VISIT_SETS: tuple[str, ...] = ("clinical", "t0", "t0-t1", "t0-t2")
#: Clinical inputs of every visit set (the published reference model uses HR + HER2).
CLINICAL_COLUMNS: tuple[str, ...] = ("HR", "HER2")
#: Pre-treatment (T0) measurements.
T0_COLUMNS: tuple[str, ...] = ("VOLUME_TUM_BLU_V10", "LD_T0", "SPHERICITY_T0", "BPE_5slice_mean_T0")
#: Percent change from T0 to the early-treatment visit T1 (~3 weeks) and to the inter-regimen visit T2.
T1_CHANGE_COLUMNS: tuple[str, ...] = ("FTV_pch_T0_T1", "LD_pch_T0_T1", "Sphericity_pch_T0_T1", "BPE_pch_T0_T1")
T2_CHANGE_COLUMNS: tuple[str, ...] = ("FTV_pch_T0_T2", "LD_pch_T0_T2", "Sphericity_pch_T0_T2", "BPE_pch_T0_T2")
_SET_COLUMNS: dict[str, tuple[str, ...]] = {
    "clinical": (),
    "t0": T0_COLUMNS,
    "t0-t1": T0_COLUMNS + T1_CHANGE_COLUMNS,
    "t0-t2": T0_COLUMNS + T1_CHANGE_COLUMNS + T2_CHANGE_COLUMNS,
}


def visit_columns(visit_set: str) -> tuple[str, ...]:
    """The MRI measurement columns of a visit set (clinical columns not included)."""
    if visit_set not in _SET_COLUMNS:
        raise ValueError(f"unknown visit set {visit_set!r}; known: {', '.join(VISIT_SETS)}")
    return _SET_COLUMNS[visit_set]


def transform(column: str, values: pd.Series) -> np.ndarray:
    """Fixed, patient-independent transform of one measurement onto a unit-ish scale (NaN stays NaN).

    Volumes and BPE: log1p; longest diameter: cm / 5; sphericity: as is (0-1); percent changes: clipped
    to [-100, 200] % and divided by 100 (a few tumours grow > 10x, which would dominate SGD).
    """
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if column.startswith("VOLUME_") or column.startswith("BPE_5slice"):
        return np.log1p(np.clip(x, 0.0, None))
    if column.startswith("LD_T"):
        return x / 5.0
    if "_pch_" in column:
        return np.clip(x, -100.0, 200.0) / 100.0
    return x


def load_longitudinal(features: str | Path = ISPY2_MRI_FEATURES, clinical: str | Path = ISPY2_CLINICAL,
                      sites: str | Path = MAMA_MIA_TABLE) -> pd.DataFrame:
    """One row per I-SPY2 patient with MRI measurements, a 0/1 pCR, HR, HER2 and a trial site.

    Patients without a label or a site are left out and counted on stderr (with the reason).
    """
    feats = _read_excel(features)
    if "CLINICAL-TRIAL-SUBJECT-ID" not in feats.columns:
        raise ValueError(f"{features}: no CLINICAL-TRIAL-SUBJECT-ID column")
    feats["key"] = feats["CLINICAL-TRIAL-SUBJECT-ID"].map(id_key)
    clin = _read_excel(clinical)
    missing = [c for c in ("Patient_ID", "pCR", *CLINICAL_COLUMNS) if c not in clin.columns]
    if missing:
        raise ValueError(f"{clinical}: missing columns {missing}")
    clin["key"] = clin["Patient_ID"].map(id_key)
    site_table = _read_excel(sites)
    site_table = site_table[site_table["patient_id"].map(collection_of) == "ISPY2"]
    site_of = dict(zip(site_table["patient_id"].map(id_key), site_table["site"]))
    table = feats.merge(clin[["key", "Patient_ID", "pCR", *CLINICAL_COLUMNS]], on="key", how="left")
    table["site"] = table["key"].map(site_of)
    table["pCR"] = pd.to_numeric(table["pCR"], errors="coerce")
    keep = table["pCR"].isin([0, 1]) & table["site"].notna()
    if (~keep).any():
        print(f"longitudinal: {int((~keep).sum())} of {len(table)} patients left out (no 0/1 pCR in {clinical} "
              f"or no I-SPY2 site in {sites})", file=sys.stderr)
    table = table[keep].reset_index(drop=True)
    table["patient_id"] = "ISPY2-" + table["key"].astype(str)
    return table


def _read_excel(path: str | Path) -> pd.DataFrame:
    try:
        return pd.read_excel(Path(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def design(table: pd.DataFrame, visit_set: str) -> tuple[np.ndarray, list[str]]:
    """Model inputs of ``visit_set``: HR, HER2 and the set's transformed measurements, with a 0/1
    present-indicator column after every input that has a missing value (missing values become 0)."""
    columns = list(CLINICAL_COLUMNS) + list(visit_columns(visit_set))
    blocks, names = [], []
    for col in columns:
        x = transform(col, table[col]) if col not in CLINICAL_COLUMNS else \
            pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
        known = ~np.isnan(x)
        blocks.append(np.where(known, x, 0.0))
        names.append(col)
        if not known.all():
            blocks.append(known.astype(np.float64))
            names.append(f"{col}_present")
    return np.column_stack(blocks), names


def clinical_data(table: pd.DataFrame, visit_set: str) -> ClinicalData:
    """The visit set's inputs in the container the clinical experiment's folds and methods take."""
    X, names = design(table, visit_set)
    issues: list[dict[str, Any]] = [{"patient": "*", "field": "inputs", "value": ";".join(names),
                                     "reason": f"inputs of visit set {visit_set}"}]
    return ClinicalData(table=table, X=X, y=table["pCR"].to_numpy(dtype=float),
                        ids=table["patient_id"].to_numpy(dtype=str), site=table["site"].astype(str).to_numpy(),
                        collection=np.full(len(table), "ISPY2"), issues=issues)
