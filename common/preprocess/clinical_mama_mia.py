"""MAMA-MIA ``clinical_and_imaging_info.xlsx`` (all collections, harmonised) into the canonical schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.preprocess.clinical_sources import (
    Issues,
    anti_her2_from_agents,
    column,
    finish,
    hr_from_er_pr,
    is_blank,
    map_codes,
    menopause_from_text,
    norm_key,
    numeric,
    read_header_table,
    reconcile_subtype,
    require,
    source_rows,
    subtype_from_receptors,
    to_number,
)


MAMA_MIA_PCR_DEFINITION = ("pCR to neoadjuvant chemotherapy as harmonised by MAMA-MIA ('pcr' 0/1; each "
                           "collection's own definition: Duke code 1 vs 2, I-SPY ypT0/is ypN0)")
MAMA_MIA_CODES: dict[str, dict[Any, Any]] = {
    "hr": {0: 0, 1: 1}, "er": {0: 0, 1: 1}, "pr": {0: 0, 1: 1}, "her2": {0: 0, 1: 1},
    "anti_her2": {0: 0, 1: 1},
    "grade": {"low": 1, "intermediate": 2, "high": 3},
}
#: MAMA-MIA ``tumor_subtype`` labels -> the canonical subtypes each is compatible with. ``her2_enriched`` is
#: HR+HER2+ in DUKE/ISPY1/NACT but HR-HER2+ in ISPY2, and ``luminal_b`` is HR+HER2+ in ISPY2: both are
#: ambiguous on their own, so the subtype is derived from ``hr``/``her2`` and the label only cross-checks.
MAMA_MIA_SUBTYPES: dict[str, frozenset[str]] = {
    "luminal": frozenset({"luminal"}),
    "luminal_a": frozenset({"luminal"}),
    "luminal_b": frozenset({"luminal", "luminal_her2"}),
    "her2_enriched": frozenset({"luminal_her2", "her2_pure"}),
    "her2_pure": frozenset({"her2_pure"}),
    "triple_negative": frozenset({"triple_negative"}),
}


def mama_mia_patient_id(raw: Any) -> Any:
    """Collection DICOM spelling of a MAMA-MIA ID: ``DUKE_001`` -> ``Breast_MRI_001``,
    ``ISPY2_105513`` -> ``ISPY2-105513``; other IDs (``ISPY1_1001``, ``NACT_01``) kept."""
    if is_blank(raw):
        return raw
    text = str(raw).strip()
    m = re.fullmatch(r"DUKE_0*(\d+)", text, flags=re.IGNORECASE)
    if m:
        return f"Breast_MRI_{int(m.group(1)):03d}"
    m = re.fullmatch(r"ISPY2_(\d+)", text, flags=re.IGNORECASE)
    if m:
        return f"ISPY2-{m.group(1)}"
    return text


def load_mama_mia(path: Path, site: str | None, issues: Issues) -> pd.DataFrame:
    """MAMA-MIA ``clinical_and_imaging_info.xlsx`` sheet ``dataset_info`` (or the same columns as CSV)."""
    sheet, book = None, None
    if path.suffix.lower() != ".csv":
        book = pd.ExcelFile(path)
        sheet = "dataset_info" if "dataset_info" in book.sheet_names else book.sheet_names[0]
    data = read_header_table(path, 0, sheet=sheet, book=book)
    rows = source_rows(data)
    raw_id = require(data, "patient_id", path)
    pid = raw_id.map(mama_mia_patient_id)
    label = pid.where(pid.map(lambda v: not is_blank(v)), rows.map(lambda r: f"(row {r})"))
    cols: dict[str, Any] = {}
    for name in ("hr", "er", "pr", "her2"):
        cols[name] = map_codes(column(data, name, name, issues, path), label, name, MAMA_MIA_CODES[name], issues,
                               column=name)
    cols["grade"] = map_codes(column(data, "nottingham_grade", "grade", issues, path), label, "grade",
                              MAMA_MIA_CODES["grade"], issues, column="nottingham_grade")
    cols["age"] = to_number(column(data, "age", "age", issues, path), label, "age", issues, column="age",
                            lo=10, hi=110)
    cols["menopause"] = menopause_from_text(column(data, "menopause", "menopause", issues, path), label, issues,
                                            column="menopause")
    # pCR: exactly 0/1; anything else (the stray 0.295) is reported and gives no label.
    raw_pcr = column(data, "pcr", "pcr", issues, path)
    cols["pcr"] = map_codes(raw_pcr, label, "pcr", {0: 0, 1: 1}, issues, column="pcr")
    hr = numeric(cols["hr"]).where(numeric(cols["hr"]).notna(), hr_from_er_pr(cols["er"], cols["pr"]))
    cols["hr"] = hr
    cols["subtype"] = reconcile_subtype(subtype_from_receptors(hr, cols["her2"]),
                                        column(data, "tumor_subtype", "subtype", issues, path),
                                        MAMA_MIA_SUBTYPES, label, issues, column="tumor_subtype")
    # anti-HER2: the recorded column; else an anti-HER2 drug named in nac_agent (=1); an I-SPY2 arm is the
    # whole regimen, so only there does an arm without one mean 0.
    recorded = numeric(map_codes(column(data, "anti_her2_neu_therapy", "anti_her2", issues, path), label,
                                 "anti_her2", MAMA_MIA_CODES["anti_her2"], issues, column="anti_her2_neu_therapy"))
    agents = column(data, "nac_agent", "anti_her2", issues, path)
    dataset = data["dataset"] if "dataset" in data.columns else pd.Series([np.nan] * len(data), index=data.index)
    is_ispy2 = dataset.map(lambda v: norm_key(v) == "ispy2" if not is_blank(v) else False)
    from_agents = anti_her2_from_agents(agents, label, issues, column="nac_agent", complete_regimen=True)
    from_agents = from_agents.where((from_agents == 1) | is_ispy2)
    cols["anti_her2"] = recorded.where(recorded.notna(), from_agents)
    # Every MAMA-MIA collection is a neoadjuvant-chemotherapy cohort: rows of a known collection had NAC.
    cols["nac"] = dataset.map(lambda v: np.nan if is_blank(v) else 1.0).astype(float)
    site_col = data["site"] if "site" in data.columns else pd.Series([np.nan] * len(data), index=data.index)
    sites = site_col.map(lambda v: np.nan if is_blank(v) else str(v).strip())
    if site:
        sites = sites.fillna(site)
    for idx in sites.index[sites.isna()]:
        issues.add(label[idx], "site", None, f"no 'site' value in source row {rows[idx]}; site left missing")
    cols["site"] = sites
    return finish(cols, pid, rows, source="mama-mia", pcr_definition=MAMA_MIA_PCR_DEFINITION, issues=issues)
