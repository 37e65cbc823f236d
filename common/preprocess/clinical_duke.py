"""Duke-Breast-Cancer-MRI clinical table (``Clinical_and_Other_Features.xlsx``) into the canonical schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common.preprocess.clinical_sources import (
    Issues,
    column,
    finish,
    map_codes,
    numeric,
    read_header_table,
    require,
    source_rows,
    to_number,
)


DUKE_PCR_DEFINITION = ("pCR code 1 vs non-pCR code 2 (Duke 'Pathologic Response to Neoadjuvant Therapy'); "
                       "codes 3 DCIS only, 4 LCIS only, 5 unavailable and patients without NAC: no label")
_DUKE_COLS = {
    "patient_id": "Patient ID",
    "dob_days": "Date of Birth (Days)",
    "menopause": "Menopause (at diagnosis)",
    "er": "ER",
    "pr": "PR",
    "her2": "HER2",
    "subtype": "Mol Subtype",
    "t_stage": "Staging(Tumor Size)# [T]",
    "n_stage": "Staging(Nodes)#(Nx replaced by -1)[N]",
    "grade": "Nottingham grade",
    "anti_her2": "Neoadjuvant Anti-Her2 Neu Therapy",
    "nac": "Received Neoadjuvant Therapy or Not",
    "pcr": "Pathologic Response to Neoadjuvant Therapy",
}
DUKE_CODES: dict[str, dict[Any, Any]] = {
    "menopause": {0: 0, 1: 1, 2: None},  # 2 = N/A
    "er": {0: 0, 1: 1},
    "pr": {0: 0, 1: 1},
    "her2": {0: 0, 1: 1, 2: None},  # 2 = borderline: a known code, no HER2 status
    "subtype": {0: "luminal", 1: "luminal_her2", 2: "her2_pure", 3: "triple_negative"},
    "t_stage": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
    "n_stage": {-1: None, 0: 0, 1: 1, 2: 2, 3: 3},  # -1 = Nx
    "grade": {1: 1, 2: 2, 3: 3},
    "anti_her2": {0: 0, 1: 1},
    "nac": {1: 1, 2: 0},
    "pcr": {1: 1, 2: 0, 3: None, 4: None, 5: None},
}


def load_duke(path: Path, site: str | None, issues: Issues) -> pd.DataFrame:
    """Duke ``Clinical_and_Other_Features.xlsx``: sheet ``Data``, names on the 2nd of 3 header rows."""
    book = None if path.suffix.lower() == ".csv" else pd.ExcelFile(path)
    sheet = "Data" if book is not None and "Data" in book.sheet_names else None
    data = read_header_table(path, header_row=1, sheet=sheet, skip=1, book=book)  # 3rd header row: the code legend
    rows = source_rows(data)
    pid = require(data, _DUKE_COLS["patient_id"], path)
    cols: dict[str, Any] = {}
    for name, codes in DUKE_CODES.items():
        raw = column(data, _DUKE_COLS[name], name, issues, path)
        cols[name] = map_codes(raw, pid, name, codes, issues, column=_DUKE_COLS[name])
    dob = to_number(column(data, _DUKE_COLS["dob_days"], "age", issues, path), pid, "age", issues,
                    column=_DUKE_COLS["dob_days"], lo=-120 * 365.25, hi=0)
    cols["age"] = -dob / 365.25
    nac = numeric(cols["nac"])
    pcr = numeric(cols["pcr"])
    no_nac = pcr.notna() & (nac != 1)
    for idx in pcr.index[no_nac]:
        issues.add(pid[idx], "pcr", pcr[idx], "pCR recorded but no neoadjuvant therapy recorded; no label")
    cols["pcr"] = pcr.where(~no_nac)
    cols["site"] = site or "DUKE"
    return finish(cols, pid, rows, source="duke", pcr_definition=DUKE_PCR_DEFINITION, issues=issues)
