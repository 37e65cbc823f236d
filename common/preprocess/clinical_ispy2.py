"""I-SPY2 TCIA clinical table into the canonical schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common.preprocess.clinical_sources import (
    Issues,
    anti_her2_from_agents,
    column,
    finish,
    is_blank,
    map_codes,
    menopause_from_text,
    norm_key,
    read_header_table,
    require,
    source_rows,
    to_number,
)


ISPY2_PCR_DEFINITION = "pCR (ypT0/is ypN0) as recorded by I-SPY2 (TCIA 'pCR' column 1 vs 0)"
ISPY2_CODES: dict[str, dict[Any, Any]] = {"hr": {0: 0, 1: 1}, "her2": {0: 0, 1: 1}, "pcr": {0: 0, 1: 1}}


def ispy2_patient_id(raw: Any) -> Any:
    """I-SPY2 DICOM PatientID spelling: ``105513`` -> ``ISPY2-105513``; prefixed IDs kept as given."""
    if is_blank(raw):
        return raw
    key = norm_key(raw)
    return f"ISPY2-{key}" if key.isdigit() else str(raw).strip()


def load_ispy2(path: Path, site: str | None, issues: Issues) -> pd.DataFrame:
    """I-SPY2 TCIA ``ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx`` (one sheet, one header row)."""
    data = read_header_table(path, header_row=0)
    rows = source_rows(data)
    raw_id = require(data, "Patient_ID", path)
    pid = raw_id.map(ispy2_patient_id)
    cols: dict[str, Any] = {}
    for name, col in (("hr", "HR"), ("her2", "HER2"), ("pcr", "pCR")):
        cols[name] = map_codes(column(data, col, name, issues, path), pid, name, ISPY2_CODES[name], issues, column=col)
    cols["age"] = to_number(column(data, "Age_at_Screening", "age", issues, path), pid, "age", issues,
                            column="Age_at_Screening", lo=10, hi=110)
    cols["menopause"] = menopause_from_text(column(data, "menopausal_status", "menopause", issues, path), pid,
                                            issues, column="menopausal_status")
    cols["anti_her2"] = anti_her2_from_agents(column(data, "Arm", "anti_her2", issues, path), pid, issues,
                                              column="Arm", complete_regimen=True)
    cols["nac"] = 1.0
    cols["site"] = site or "ISPY2"
    return finish(cols, pid, rows, source="ispy2", pcr_definition=ISPY2_PCR_DEFINITION, issues=issues)
