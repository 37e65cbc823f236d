"""The canonical clinical schema every site's table is harmonised into, and its fixed numeric encoding.

The encoding uses fixed, documented scalings (no statistics estimated from any site), so every
hospital encodes identically and no normalisation statistic can leak from a test split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Canonical clinical columns (one row per patient). Missing values stay NaN / empty.
#: Binary columns are 0/1 floats; ``subtype`` is one of SUBTYPES; ``pcr`` is the label (0/1/NaN).
CANONICAL_COLUMNS: tuple[str, ...] = (
    "patient_id",  # str, the site's own ID (never leaves the site)
    "site",  # str, institution / trial-site code
    "source",  # str, which adapter produced the row: duke | ispy2 | ispy1 | mama-mia | csv
    "age",  # years, float
    "menopause",  # 0 pre/peri, 1 post
    "er",  # 0/1
    "pr",  # 0/1
    "her2",  # 0/1 (borderline/equivocal -> NaN)
    "hr",  # 0/1 (ER or PR positive)
    "subtype",  # luminal | luminal_her2 | her2_pure | triple_negative
    "grade",  # Nottingham / histologic grade 1..3
    "t_stage",  # 0..4 (clinical T)
    "n_stage",  # 0..3 (clinical N)
    "nac",  # received neoadjuvant chemotherapy 0/1
    "anti_her2",  # anti-HER2 therapy 0/1
    "pcr",  # label 0/1, NaN = no label
    "pcr_definition",  # text, e.g. "ypT0/is ypN0 (Duke code 1 vs 2)"
)

SUBTYPES: tuple[str, ...] = ("luminal", "luminal_her2", "her2_pure", "triple_negative")

#: Encoded model inputs (order matters: it is the clinical vector's layout).
MODEL_CLINICAL_FEATURES: tuple[str, ...] = (
    "age",
    "menopause",
    "er",
    "pr",
    "her2",
    "hr",
    "subtype_luminal",
    "subtype_luminal_her2",
    "subtype_her2_pure",
    "subtype_triple_negative",
    "grade",
    "t_stage",
    "n_stage",
    "anti_her2",
)

#: Receptor targets of the auxiliary head (MRP-style cross-modal knowledge).
RECEPTOR_TARGETS: tuple[str, ...] = ("er", "pr", "her2")

# Fixed scalings: value -> (value - centre) / scale. Binary columns stay 0/1.
_SCALING: dict[str, tuple[float, float]] = {
    "age": (50.0, 10.0),
    "grade": (2.0, 1.0),
    "t_stage": (2.0, 1.0),
    "n_stage": (1.0, 1.0),
}


def encode_clinical(
    table: pd.DataFrame, features: tuple[str, ...] = MODEL_CLINICAL_FEATURES
) -> tuple[np.ndarray, np.ndarray]:
    """Encode canonical rows as ``(values, present)`` float32 arrays of shape (n, len(features)).

    Missing inputs get value 0 and ``present`` 0 (the model's missing-value indicator).
    """
    n = len(table)
    values = np.zeros((n, len(features)), dtype=np.float32)
    present = np.zeros((n, len(features)), dtype=np.float32)
    subtype = table["subtype"] if "subtype" in table else pd.Series([np.nan] * n, index=table.index)
    for j, name in enumerate(features):
        if name.startswith("subtype_"):
            known = subtype.notna().to_numpy()
            col = (subtype == name[len("subtype_"):]).to_numpy(dtype=np.float32)
        else:
            raw = pd.to_numeric(table[name], errors="coerce") if name in table else pd.Series([np.nan] * n)
            arr = raw.to_numpy(dtype=np.float64)
            known = ~np.isnan(arr)
            centre, scale = _SCALING.get(name, (0.0, 1.0))
            col = np.where(known, (arr - centre) / scale, 0.0).astype(np.float32)
        values[:, j] = np.where(known, col, 0.0)
        present[:, j] = known.astype(np.float32)
    return values, present


def empty_canonical() -> pd.DataFrame:
    """An empty frame with the canonical columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in CANONICAL_COLUMNS})
