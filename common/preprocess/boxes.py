"""Reader of Duke-format tumour boxes (``Annotation_Boxes.xlsx``).

The file holds ``Patient ID, Start Row, End Row, Start Column, End Column, Start Slice, End Slice``,
1-based and inclusive in the pre-contrast series' voxel index space (rows = y, columns = x, slices = z
ordered along the slice normal). :func:`load_boxes` returns them 0-based inclusive as
``(z0, z1, y0, y1, x0, x1)`` keyed by ``common.patient_id.id_key(patient_id)``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.patient_id import id_key

BOX_COLUMNS = ("Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice")


Box = tuple[int, int, int, int, int, int]


def load_boxes(path: str | Path) -> dict[str, Box]:
    """Boxes keyed by id_key, 0-based inclusive (z0, z1, y0, y1, x0, x1); malformed rows left out
    (:func:`read_boxes` also returns them as issues)."""
    return read_boxes(path)[0]


def read_boxes(path: str | Path) -> tuple[dict[str, Box], list[dict[str, str]]]:
    """Boxes keyed by id_key (0-based inclusive z0,z1,y0,y1,x0,x1) and issues for malformed rows.

    A missing file or missing column raises ValueError naming the file and column.
    """
    path = Path(path)
    try:
        sheets = pd.read_excel(path, sheet_name=None) if path.suffix.lower() in {".xlsx", ".xls"} else {
            "csv": pd.read_csv(path)}
    except Exception as exc:
        raise ValueError(f"cannot read tumour boxes {path}: {exc}") from exc
    table = None
    for df in sheets.values():
        cols = [str(c).strip() for c in df.columns]
        if all(c in cols for c in BOX_COLUMNS):
            df.columns = cols
            table = df
            break
    if table is None:
        raise ValueError(f"{path}: no sheet with the columns {list(BOX_COLUMNS)}")
    boxes: dict[str, Box] = {}
    issues: list[dict[str, str]] = []
    for i, row in table.iterrows():
        pid = str(row["Patient ID"]).strip()
        try:
            v = {c: int(float(row[c])) for c in BOX_COLUMNS[1:]}
        except (TypeError, ValueError):
            issues.append({"patient": pid, "field": "Annotation_Boxes", "value": str(row.to_dict()),
                           "reason": f"{path.name} row {int(i) + 2}: non-numeric box coordinate"})
            continue
        box = (v["Start Slice"] - 1, v["End Slice"] - 1, v["Start Row"] - 1, v["End Row"] - 1,
               v["Start Column"] - 1, v["End Column"] - 1)
        if any(b < 0 for b in box) or box[0] > box[1] or box[2] > box[3] or box[4] > box[5]:
            issues.append({"patient": pid, "field": "Annotation_Boxes", "value": str(box),
                           "reason": f"{path.name} row {int(i) + 2}: start after end or index < 1"})
            continue
        boxes[id_key(pid)] = box
    return boxes, issues


__all__ = ["BOX_COLUMNS", "Box", "load_boxes", "read_boxes"]
