"""The early-treatment visit of the embedded cohort's I-SPY-style sites, on real I-SPY2 measurements.

Rule (docs/cohort.md, "Early-treatment visit"): a synthetic patient at an I-SPY1/I-SPY2 site has the
visit when its anchor is one of the 384 I-SPY2 patients whose T1 MRI was measured
(``Multi-feature-MRI-NACT-Data.xlsx``), else with probability :data:`EARLY_VISIT_RATE`. Its functional
tumour volume (FTV) change T0->T1 is the anchor's measured ``FTV_pch_T0_T1`` where one exists, else a
draw from the real changes of the I-SPY2 patients with the anchor's pCR status. The phantom's tumour
diameter is scaled by the cube root of the volume ratio.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from common.paths import ISPY2_CLINICAL, ISPY2_MRI_FEATURES

#: Share of patients with an early-treatment (T1, ~3 weeks) MRI when the anchor's own is not known: I-SPY2's
#: T1 completeness is about 80 % (the measured table holds complete cases only, so it cannot give it).
EARLY_VISIT_RATE = 0.8
#: Collections whose sites get the I-SPY early-visit rule.
ISPY_COLLECTIONS = ("ISPY1", "ISPY2")
#: Diameter ratio limits of the rendered tumour (a vanished tumour stays a faint 30 % remnant; growth is
#: capped so the tumour stays inside the breast).
SCALE_LIMITS = (0.3, 1.3)


@dataclass(frozen=True)
class EarlyVisit:
    """One patient's early visit: whether it exists, its FTV change (%) and where the change came from."""

    present: bool
    ftv_pch: float
    source: str  # "measured" (the anchor's own) | "drawn_pcr0" | "drawn_pcr1" | "" (no visit)

    @property
    def diameter_scale(self) -> float:
        """Diameter ratio T1/T0 = cube root of the volume ratio, clipped to :data:`SCALE_LIMITS`."""
        ratio = max(1.0 + self.ftv_pch / 100.0, 0.0)
        return float(np.clip(ratio ** (1.0 / 3.0), *SCALE_LIMITS))


@lru_cache(maxsize=1)
def ftv_changes() -> pd.DataFrame:
    """The real I-SPY2 T0->T1 FTV changes with pCR: columns ``key`` (numeric patient ID as text),
    ``ftv_pch``, ``pcr``; patients without a 0/1 pCR are left out."""
    feats = pd.read_excel(ISPY2_MRI_FEATURES, usecols=["CLINICAL-TRIAL-SUBJECT-ID", "FTV_pch_T0_T1"])
    clin = pd.read_excel(ISPY2_CLINICAL, usecols=["Patient_ID", "pCR"])
    feats["key"] = feats["CLINICAL-TRIAL-SUBJECT-ID"].map(_numeric_key)
    clin["key"] = clin["Patient_ID"].map(_numeric_key)
    table = feats.merge(clin[["key", "pCR"]], on="key", how="inner")
    table["pcr"] = pd.to_numeric(table["pCR"], errors="coerce")
    table = table[table["pcr"].isin([0, 1]) & table["FTV_pch_T0_T1"].notna()]
    return table.rename(columns={"FTV_pch_T0_T1": "ftv_pch"})[["key", "ftv_pch", "pcr"]].reset_index(drop=True)


def _numeric_key(value: object) -> str:
    """``ISPY2_123456`` / ``ISPY2-123456`` / ``123456`` -> ``"123456"``."""
    text = str(value).strip()
    digits = "".join(ch for ch in text.rsplit("_", 1)[-1].rsplit("-", 1)[-1] if ch.isdigit())
    return str(int(digits)) if digits else text


def plan_early_visit(collection: str, mama_id: str, pcr: int, seed: int) -> EarlyVisit | None:
    """The early visit of one anchored patient of an I-SPY-style site (None for other collections:
    they keep the phantom's own shrinkage). Deterministic for (seed, anchor)."""
    if collection not in ISPY_COLLECTIONS:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(f"early-visit:{mama_id}".encode())])
    real = ftv_changes()
    own = real.loc[real["key"] == _numeric_key(mama_id), "ftv_pch"] if collection == "ISPY2" else real.iloc[:0, 1]
    draw_present, draw_change = rng.random(), rng.integers(0, 1 << 30)
    if len(own):
        return EarlyVisit(True, float(own.iloc[0]), "measured")
    if draw_present >= EARLY_VISIT_RATE:
        return EarlyVisit(False, float("nan"), "")
    pool = real.loc[real["pcr"] == int(pcr), "ftv_pch"].to_numpy()
    return EarlyVisit(True, float(pool[int(draw_change) % len(pool)]), f"drawn_pcr{int(pcr)}")


__all__ = ["EARLY_VISIT_RATE", "ISPY_COLLECTIONS", "EarlyVisit", "ftv_changes", "plan_early_visit"]
