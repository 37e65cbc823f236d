"""The one patient-ID rule: which spellings of a patient ID name the same patient (docs/CONTRACTS.md §2b).

DICOM ``PatientID``, clinical-table IDs and tumour-box IDs of one patient are often spelled differently
(``Breast_MRI_001`` in DICOM, ``1`` in the Duke boxes, ``DUKE_001`` in MAMA-MIA). :func:`id_key` maps
every spelling of one patient to one comparison key and keeps different collections apart (``NACT_01``
never meets Duke patient ``1``). Every module that matches patients across files uses this one; it
imports nothing from the project, so it can sit under any of them without a cycle.
"""

from __future__ import annotations

import re
from typing import Any

#: Collection spellings: name -> pattern whose group 1 is the patient number.
ID_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("DUKE", re.compile(r"(?:breast[_\- ]?mri|duke)[_\- ]?0*(\d+)", re.IGNORECASE)),
    ("ISPY2", re.compile(r"(?:i-?spy-?2|acrin[_\- ]?6698)[_\- ]?0*(\d+)", re.IGNORECASE)),
    ("ISPY1", re.compile(r"(?:i-?spy-?1|acrin[_\- ]?6657)[_\- ]?0*(\d+)", re.IGNORECASE)),
    ("NACT", re.compile(r"nact[_\- ]?0*(\d+)", re.IGNORECASE)),
)


def _digits(text: str) -> str:
    """``'007'`` -> ``'7'``; ``'0'`` stays ``'0'``."""
    return str(int(text))


def _is_missing(patient_id: Any) -> bool:
    return patient_id is None or (isinstance(patient_id, float) and patient_id != patient_id)


def id_key(patient_id: Any) -> str:
    """Comparison key of a patient ID across spellings: Duke ``Breast_MRI_001`` ~ ``DUKE_001`` ~ ``1``;
    I-SPY2 ``ISPY2-105513`` ~ ``ACRIN-6698-105513`` ~ ``ISPY2_105513`` ~ ``105513``; I-SPY1 ``ISPY1_1001``
    ~ ``1001``; NACT ``NACT_01`` ~ ``NACT-1`` (key ``nact-1``, kept apart from Duke numbers). Other IDs:
    trimmed and case-folded. Missing (None/NaN) -> ``""``."""
    if _is_missing(patient_id):
        return ""
    if isinstance(patient_id, float) and patient_id.is_integer():
        patient_id = int(patient_id)
    text = str(patient_id).strip()
    for name, pattern in ID_PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            return f"nact-{_digits(m.group(1))}" if name == "NACT" else _digits(m.group(1))
    if re.fullmatch(r"\d+(?:\.0+)?", text):
        return _digits(text.split(".")[0])
    return text.casefold()


def collection_of(patient_id: Any) -> str | None:
    """The TCIA collection an ID's spelling names (``DUKE``, ``ISPY2``, ``ISPY1``, ``NACT``), else None."""
    if _is_missing(patient_id):
        return None
    text = str(patient_id).strip()
    for name, pattern in ID_PATTERNS:
        if pattern.fullmatch(text):
            return name
    return None


__all__ = ["ID_PATTERNS", "collection_of", "id_key"]
