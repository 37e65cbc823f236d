"""Clinical harmonisation: any supported site table -> canonical rows (``common.schema.CANONICAL_COLUMNS``).

``load_clinical`` sniffs the table's layout from its contents (Duke, I-SPY2, I-SPY1, MAMA-MIA, or a hospital
table with a YAML mapping), runs the matching adapter and returns the canonical table plus every problem
found (unknown codes, malformed values, empty or duplicated IDs). The source file is only read.
Patient IDs are matched across spellings by ``common.patient_id.id_key`` (re-exported here).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from common.patient_id import collection_of, id_key  # re-exported: the rule lives in common.patient_id
from common.preprocess.clinical_mapping import ClinicalMapping, load_mapped
from common.preprocess.clinical_duke import load_duke
from common.preprocess.clinical_ispy1 import load_ispy1
from common.preprocess.clinical_ispy2 import load_ispy2
from common.preprocess.clinical_mama_mia import load_mama_mia
from common.preprocess.clinical_sources import Issues

FORMATS: tuple[str, ...] = ("duke", "ispy2", "ispy1", "mama-mia", "csv")
_ADAPTERS = {"duke": load_duke, "ispy2": load_ispy2, "ispy1": load_ispy1, "mama-mia": load_mama_mia}


@dataclass
class ClinicalTable:
    """Canonical clinical rows of one source file and the issues found while reading it."""

    table: pd.DataFrame
    issues: list[dict[str, Any]] = field(default_factory=list)
    fmt: str = ""
    path: str = ""


# ---------------------------------------------------------------- format sniffing

def _head_rows(path: Path, n: int = 4) -> list[list[str]]:
    """The first ``n`` rows of every sheet (xlsx) or of the CSV, as stripped strings."""
    rows: list[list[str]] = []
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            for ws in wb.worksheets:
                for row in ws.iter_rows(max_row=n, values_only=True):
                    rows.append(["" if v is None else str(v).strip() for v in row])
        finally:
            wb.close()
    else:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            sample = fh.read(65536)
        try:
            dialect: Any = csv.Sniffer().sniff(sample.splitlines()[0] if sample else ",", delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        for i, row in enumerate(csv.reader(sample.splitlines(), dialect)):
            if i >= n:
                break
            rows.append([c.strip() for c in row])
    return rows


def sniff_format(path: str | Path) -> str:
    """Which adapter fits a table, from its header cells (not its file name); ``ValueError`` if none."""
    path = Path(path)
    heads = [set(r) for r in _head_rows(path)]

    def has(*names: str) -> bool:
        return any(all(n in h for n in names) for h in heads)

    if has("patient_id", "pcr", "tumor_subtype") or has("patient_id", "dataset", "site", "pcr"):
        return "mama-mia"
    if has("Patient ID", "Mol Subtype") or has("Patient ID", "Pathologic Response to Neoadjuvant Therapy"):
        return "duke"
    if has("SUBJECTID", "Her2MostPos") or has("SUBJECTID", "PCR") or has("SUBJECTID", "ERpos"):
        return "ispy1"
    if has("Patient_ID", "HR", "HER2", "pCR"):
        return "ispy2"
    raise ValueError(f"{path}: clinical table layout not recognised (expected Duke, I-SPY2, I-SPY1 or MAMA-MIA "
                     f"headers); pass fmt='csv' with a YAML mapping for a hospital table")


# ---------------------------------------------------------------- loading

def load_clinical(path: str | Path, fmt: str | None = None, mapping: str | Path | dict[str, Any] | ClinicalMapping
                  | None = None, site: str | None = None) -> ClinicalTable:
    """Read one clinical table into canonical rows; ``fmt`` None = sniff (a ``mapping`` alone means ``csv``).

    ``site`` fills the site where the source has none (Duke ``DUKE``, I-SPY2 ``ISPY2``, I-SPY1 ``ISPY1`` by
    default; MAMA-MIA uses its ``site`` column). Never writes to ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clinical table not found: {path}")
    if fmt is None:
        fmt = "csv" if mapping is not None else sniff_format(path)
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown clinical format {fmt!r}; known: {list(FORMATS)}")
    issues = Issues()
    if fmt == "csv":
        if mapping is None:
            raise ValueError(f"{path}: fmt='csv' needs a YAML mapping (see docs/clinical.md)")
        table = load_mapped(path, mapping, site, issues)
    else:
        table = _ADAPTERS[fmt](path, site, issues)
    return ClinicalTable(table=table, issues=issues.records, fmt=fmt, path=str(path))


def mama_mia_sites(table: pd.DataFrame) -> pd.Series:
    """Site code per patient (index = canonical ``patient_id``) for partitioning a MAMA-MIA table by site."""
    rows = table[table["patient_id"].notna() & table["site"].notna()]
    return pd.Series(rows["site"].to_numpy(), index=rows["patient_id"].to_numpy(), name="site")


__all__ = ["ClinicalTable", "FORMATS", "collection_of", "id_key", "load_clinical", "mama_mia_sites", "sniff_format"]
