"""I-SPY1 clinical workbook (clinical + outcomes sheets) into the canonical schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common.preprocess.clinical_sources import (
    Issues,
    column,
    finish,
    hr_from_er_pr,
    is_blank,
    map_codes,
    norm_key,
    numeric,
    read_header_table,
    reconcile_subtype,
    source_rows,
    subtype_from_receptors,
    to_number,
)


ISPY1_PCR_DEFINITION = ("pCR: no residual invasive disease in breast or lymph nodes, in situ disease allowed "
                        "(ypT0/is ypN0), as recorded by I-SPY1 ('PCR' 1 vs 0; blank = no surgery, no label)")
ISPY1_CODES: dict[str, dict[Any, Any]] = {
    "er": {0: 0, 1: 1, 2: None},  # 2 = indeterminate
    "pr": {0: 0, 1: 1, 2: None},
    "hr": {0: 0, 1: 1, 2: None},
    "her2": {0: 0, 1: 1},
    "pcr": {0: 0, 1: 1},
}
#: HR_HER2_CATEGORY: 1 HR+HER2-, 2 HER2+ (HR either), 3 triple negative.
ISPY1_CATEGORY: dict[str, frozenset[str]] = {
    "1": frozenset({"luminal"}),
    "2": frozenset({"luminal_her2", "her2_pure"}),
    "3": frozenset({"triple_negative"}),
}


def ispy1_patient_id(raw: Any) -> Any:
    """I-SPY1 DICOM PatientID spelling: ``1001`` -> ``ISPY1_1001``."""
    if is_blank(raw):
        return raw
    key = norm_key(raw)
    return f"ISPY1_{key}" if key.isdigit() else str(raw).strip()


def _ispy1_sheets(path: Path) -> list[pd.DataFrame]:
    """Every sheet (or the CSV) whose first row holds ``SUBJECTID``."""
    if path.suffix.lower() == ".csv":
        return [read_header_table(path, 0)]
    frames = []
    book = pd.ExcelFile(path)
    for name in book.sheet_names:
        frame = read_header_table(path, 0, sheet=name, book=book)
        if "SUBJECTID" in frame.columns:
            frames.append(frame)
    return frames


def load_ispy1(path: Path, site: str | None, issues: Issues) -> pd.DataFrame:
    """I-SPY1 workbook: clinical subset and outcomes subset sheets merged on ``SUBJECTID``."""
    frames = _ispy1_sheets(path)
    if not frames:
        raise ValueError(f"{path}: no sheet with a 'SUBJECTID' column")
    merged = frames[0].copy()
    merged["_row"] = source_rows(merged)
    merged["_key"] = merged["SUBJECTID"].map(lambda v: None if is_blank(v) else norm_key(v))
    for extra in frames[1:]:
        extra = extra.copy()
        extra["_key"] = extra["SUBJECTID"].map(lambda v: None if is_blank(v) else norm_key(v))
        new = [c for c in extra.columns if c not in merged.columns or c == "_key"]
        only_extra = set(extra["_key"].dropna()) - set(merged["_key"].dropna())
        only_base = set(merged["_key"].dropna()) - set(extra["_key"].dropna())
        for key in sorted(only_base):
            issues.add(ispy1_patient_id(key), "pcr", None, "patient missing from an I-SPY1 sheet; its fields left missing")
        for key in sorted(only_extra):
            issues.add(ispy1_patient_id(key), "patient_id", None,
                       "patient only in an I-SPY1 outcomes/secondary sheet; clinical fields left missing")
        extra = extra.dropna(subset=["_key"]).drop_duplicates("_key")
        merged = merged.merge(extra[new], on="_key", how="outer")
        merged["SUBJECTID"] = merged["SUBJECTID"].where(merged["SUBJECTID"].notna(), merged["_key"])
    rows = merged["_row"].fillna(-1).astype(int)
    pid = merged["SUBJECTID"].map(ispy1_patient_id)
    cols: dict[str, Any] = {}
    for name, col in (("er", "ERpos"), ("pr", "PgRpos"), ("hr", "HR Pos"), ("her2", "Her2MostPos"), ("pcr", "PCR")):
        cols[name] = map_codes(column(merged, col, name, issues, path), pid, name, ISPY1_CODES[name], issues,
                               column=col)
    cols["age"] = to_number(column(merged, "age", "age", issues, path), pid, "age", issues, column="age", lo=10, hi=110)
    hr = numeric(cols["hr"]).where(numeric(cols["hr"]).notna(), hr_from_er_pr(cols["er"], cols["pr"]))
    derived = subtype_from_receptors(hr, cols["her2"])
    cols["subtype"] = reconcile_subtype(derived, column(merged, "HR_HER2_CATEGORY", "subtype", issues, path),
                                        ISPY1_CATEGORY, pid, issues, column="HR_HER2_CATEGORY")
    cols["nac"] = 1.0
    cols["site"] = site or "ISPY1"
    return finish(cols, pid, rows, source="ispy1", pcr_definition=ISPY1_PCR_DEFINITION, issues=issues)
