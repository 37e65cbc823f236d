"""Write each site's clinical table in its collection's native format, and Duke-style tumour boxes.

Duke -> ``clinical.xlsx`` in the exact layout of the real ``Clinical_and_Other_Features.xlsx`` (the real
header rows, merged cells and legend sheets are kept; data rows are the anchor patients' real rows
with the coded fields the generator relies on re-coded from the anchor); I-SPY2 -> the TCIA
``ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx`` layout; I-SPY1/NACT -> MAMA-MIA ``dataset_info`` columns as CSV.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd

from common.paths import DUKE_CLINICAL, ISPY2_CLINICAL
from simulation.cohort_sites import Anchor

_FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)

# Duke column indices (0-based, see data/duke/duke_clinical_columns.csv) and codes
_D_ID, _D_MANU, _D_MODEL, _D_FIELD, _D_DOB, _D_MENO = 0, 2, 3, 5, 19, 20
_D_ER, _D_PR, _D_HER2, _D_SUBTYPE, _D_GRADE, _D_PATH, _D_NAC_CHEMO, _D_NAT = 23, 24, 25, 26, 34, 59, 82, 91
_DUKE_MANU = {"GE": 0, "SIEMENS": 2}
_DUKE_MODEL = {"avanto": 0, "optima mr450w": 1, "signa excite": 2, "signa hdx": 3, "signa hdxt": 4, "skyra": 5,
               "trio": 6, "triotim": 7}
_DUKE_FIELD = {1.494: 0, 1.5: 1, 2.8936: 2, 3.0: 3}
_DUKE_SUBTYPE = {"luminal": 0, "luminal_her2": 1, "her2_pure": 2, "triple_negative": 3}
_GRADE = {"low": 1, "intermediate": 2, "high": 3}
_ISPY2_MENO = {
    "pre": "Premenopausal(<6 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
    "post": "Postmenopausal (prior bilateral ovariectomy OR > 12 months since LMP with no prior hysterectomy)",
    "peri": "Perimenopausal(6-12 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
}


def normalise_xlsx(path: Path) -> None:
    """Make an openpyxl-written workbook byte-identical across runs (fixed zip and document times)."""
    with zipfile.ZipFile(path) as zin:
        items = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in items:
            if name == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*", rb"\g<1>2020-01-01T00:00:00Z", data)
            zout.writestr(zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME), data, zipfile.ZIP_DEFLATED)


def _binary(value: float) -> int | str:
    return "NA" if value != value else int(value)


def _meno_key(text: str | None) -> str | None:
    if not text:
        return None
    t = text.strip().lower()
    return next((k for k in ("pre", "post", "peri") if t.startswith(k)), None)


def write_duke_clinical(path: Path, anchors: list[Anchor], source: Path = DUKE_CLINICAL) -> None:
    """Duke workbook: real 3-row header; the anchors' real rows with generator-relevant codes re-set."""
    wb = openpyxl.load_workbook(source)
    ws = wb["Data"]
    real = {row[0]: list(row) for row in ws.iter_rows(min_row=4, values_only=True) if row[0]}
    ncol = ws.max_column
    ws.delete_rows(4, ws.max_row)
    for r, a in enumerate(anchors, start=4):
        vals = real.get(a.patient_id, [None] * ncol)
        vals = list(vals) + [None] * (ncol - len(vals))
        vals[_D_ID] = a.patient_id
        vals[_D_MANU] = _DUKE_MANU.get(a.manufacturer.upper(), vals[_D_MANU])
        vals[_D_MODEL] = _DUKE_MODEL.get(a.model.strip().lower(), vals[_D_MODEL])
        vals[_D_FIELD] = _DUKE_FIELD.get(round(a.field_strength, 4), vals[_D_FIELD])
        if a.age == a.age:
            vals[_D_DOB] = -int(round(a.age * 365.25 + 100))  # negative days before diagnosis
        meno = _meno_key(a.menopause)
        vals[_D_MENO] = {"pre": 0, "peri": 0, "post": 1}.get(meno, 2) if meno else vals[_D_MENO]
        vals[_D_ER], vals[_D_PR], vals[_D_HER2] = _binary(a.er), _binary(a.pr), _binary(a.her2)
        if a.subtype in _DUKE_SUBTYPE:
            vals[_D_SUBTYPE] = _DUKE_SUBTYPE[a.subtype]
        if a.grade in _GRADE:
            vals[_D_GRADE] = _GRADE[a.grade]
        vals[_D_PATH] = 1 if a.pcr == 1 else 2
        vals[_D_NAT] = 1
        if vals[_D_NAC_CHEMO] is None:
            vals[_D_NAC_CHEMO] = 1
        for c, v in enumerate(vals, start=1):
            ws.cell(row=r, column=c, value=v)
    wb.save(path)
    normalise_xlsx(path)


def write_ispy2_clinical(path: Path, anchors: list[Anchor], source: Path = ISPY2_CLINICAL) -> None:
    """I-SPY2 TCIA clinical layout (Patient_ID 6 digits, HR, HER2, pCR, Age_at_Screening, ...)."""
    real_df = pd.read_excel(source)
    sheet = openpyxl.load_workbook(source, read_only=True).sheetnames[0]
    real = {int(r.Patient_ID): r._asdict() for r in real_df.itertuples(index=False)}
    rows = []
    for a in anchors:
        pid = int(a.patient_id.split("-")[-1])
        base = dict(real.get(pid, {c: None for c in real_df.columns}))
        base["Patient_ID"] = pid
        if not base.get("Arm"):
            base["Arm"] = "Paclitaxel"
        base["HR"] = _binary(a.hr) if a.hr == a.hr else base.get("HR")
        base["HER2"] = _binary(a.her2) if a.her2 == a.her2 else base.get("HER2")
        base["pCR"] = a.pcr
        if a.age == a.age:
            base["Age_at_Screening"] = float(a.age)
        meno = _meno_key(a.menopause)
        if meno:
            base["menopausal_status"] = _ISPY2_MENO[meno]
        rows.append(base)
    df = pd.DataFrame(rows, columns=list(real_df.columns))
    with pd.ExcelWriter(path, engine="openpyxl") as xw:
        df.to_excel(xw, sheet_name=sheet, index=False)
    normalise_xlsx(path)


def write_mama_mia_csv(path: Path, anchors: list[Anchor], overrides: dict[str, dict[str, object]],
                       columns: list[str]) -> None:
    """MAMA-MIA ``dataset_info`` columns, one row per anchor; acquisition columns describe the written files."""
    rows = []
    for a in anchors:
        row = {c: a.row.get(c) for c in columns}
        row.update(overrides.get(a.patient_id, {}))
        row["pcr"] = a.pcr
        rows.append(row)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False, lineterminator="\n")


def write_boxes(path: Path, boxes: dict[str, tuple[int, int, int, int, int, int]]) -> None:
    """Duke ``Annotation_Boxes.xlsx`` layout; input boxes are 0-based inclusive (z0,z1,y0,y1,x0,x1),
    written 1-based inclusive (Start/End Row = y, Column = x, Slice = z) as the Duke page documents."""
    rows = [{"Patient ID": pid, "Start Row": b[2] + 1, "End Row": b[3] + 1, "Start Column": b[4] + 1,
             "End Column": b[5] + 1, "Start Slice": b[0] + 1, "End Slice": b[1] + 1} for pid, b in boxes.items()]
    with pd.ExcelWriter(path, engine="openpyxl") as xw:
        pd.DataFrame(rows).to_excel(xw, sheet_name="Sheet1", index=False)
    normalise_xlsx(path)


def is_missing(value: object) -> bool:
    """True for None/NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))
