"""Per-collection clinical adapters (Duke, I-SPY2, I-SPY1, MAMA-MIA) into the canonical schema.

Each adapter reads its collection's public table exactly as TCIA / MAMA-MIA ship it, maps every coded
value through an explicit code table (unknown codes become NaN plus an issue, never a guess) and returns
canonical columns (``common.schema.CANONICAL_COLUMNS``). Shared helpers (code mapping, numeric parsing,
ID checks, subtype derivation) live here too so the YAML-mapped adapter uses the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.schema import CANONICAL_COLUMNS, SUBTYPES

# ---------------------------------------------------------------- issues and value normalisation

#: Strings every adapter treats as "missing" without an issue (the Duke legend: NA not available,
#: NC not collected, NP not pertinent, x info not available).
MISSING_TOKENS: frozenset[str] = frozenset({"", "na", "n/a", "nan", "nc", "np", "x", "none", "null", "-"})


@dataclass
class Issues:
    """Collects ``{"patient", "field", "value", "reason"}`` records; the load never stops on bad input."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, patient: Any, field_: str, value: Any, reason: str) -> None:
        self.records.append({"patient": str(patient), "field": field_, "value": _plain(value), "reason": reason})


def _plain(value: Any) -> Any:
    """JSON-friendly scalar for an issue record."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (pd.Timestamp,)):
        return str(value)
    return value


def is_blank(value: Any) -> bool:
    """True for None, NaN and the silent missing tokens (``NA``, ``NC``, empty string, ...)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().casefold() in MISSING_TOKENS:
        return True
    return bool(pd.isna(value)) if not isinstance(value, (str, list, dict, tuple)) else False


def norm_key(value: Any) -> str:
    """Comparison key of a raw code: numbers as their shortest form (``1``, ``1.0``, ``"1"`` -> ``"1"``),
    text stripped and case-folded with inner whitespace collapsed."""
    if isinstance(value, bool):
        return str(value).casefold()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    text = re.sub(r"\s+", " ", str(value).strip()).casefold()
    try:
        f = float(text)
    except ValueError:
        return text
    if math.isnan(f) or math.isinf(f):
        return text
    return str(int(f)) if f.is_integer() else repr(f)


def map_codes(
    values: pd.Series,
    patients: pd.Series,
    field_: str,
    codes: Mapping[Any, Any],
    issues: Issues,
    *,
    column: str,
) -> pd.Series:
    """Map raw codes through ``codes`` (raw -> canonical; canonical ``None`` = known code meaning missing).

    Blank cells stay missing silently; a code not in ``codes`` becomes NaN and an ``unknown code`` issue.
    """
    table = {norm_key(k): v for k, v in codes.items()}
    out: list[Any] = []
    for pid, raw in zip(patients, values):
        if is_blank(raw):
            out.append(np.nan)
            continue
        key = norm_key(raw)
        if key in table:
            mapped = table[key]
            out.append(np.nan if mapped is None else mapped)
        else:
            issues.add(pid, field_, raw, f"unknown code {raw!r} in column {column!r}; left missing")
            out.append(np.nan)
    return pd.Series(out, index=values.index, dtype=object)


def to_number(
    values: pd.Series,
    patients: pd.Series,
    field_: str,
    issues: Issues,
    *,
    column: str,
    lo: float | None = None,
    hi: float | None = None,
) -> pd.Series:
    """Parse numbers; non-numeric text or values outside ``[lo, hi]`` become NaN plus an issue."""
    out = np.full(len(values), np.nan)
    for i, (pid, raw) in enumerate(zip(patients, values)):
        if is_blank(raw):
            continue
        try:
            num = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            issues.add(pid, field_, raw, f"non-numeric value {raw!r} in column {column!r}; left missing")
            continue
        if math.isnan(num):
            continue
        if (lo is not None and num < lo) or (hi is not None and num > hi):
            issues.add(pid, field_, raw, f"value {raw!r} in column {column!r} outside [{lo}, {hi}]; left missing")
            continue
        out[i] = num
    return pd.Series(out, index=values.index, dtype=float)


def numeric(series: pd.Series) -> pd.Series:
    """Float view of an already-mapped column (NaN stays NaN)."""
    return pd.to_numeric(series, errors="coerce").astype(float)


# ---------------------------------------------------------------- receptor-derived columns

#: Canonical subtype from (HR, HER2): luminal = HR+HER2-, luminal_her2 = HR+HER2+, her2_pure = HR-HER2+,
#: triple_negative = HR-HER2- (ER-PR-HER2-).
_SUBTYPE_FROM_RECEPTORS: dict[tuple[int, int], str] = {
    (1, 0): "luminal",
    (1, 1): "luminal_her2",
    (0, 1): "her2_pure",
    (0, 0): "triple_negative",
}


def hr_from_er_pr(er: pd.Series, pr: pd.Series) -> pd.Series:
    """HR = ER or PR positive: 1 if either is 1, 0 if both are 0, NaN otherwise."""
    er, pr = numeric(er), numeric(pr)
    hr = pd.Series(np.nan, index=er.index, dtype=float)
    hr[(er == 0) & (pr == 0)] = 0.0
    hr[(er == 1) | (pr == 1)] = 1.0
    return hr


def subtype_from_receptors(hr: pd.Series, her2: pd.Series) -> pd.Series:
    """Canonical subtype from HR and HER2 (NaN where either is unknown)."""
    out = [
        _SUBTYPE_FROM_RECEPTORS.get((int(h), int(e))) if h == h and e == e else np.nan
        for h, e in zip(numeric(hr), numeric(her2))
    ]
    return pd.Series([np.nan if v is None else v for v in out], index=hr.index, dtype=object)


def reconcile_subtype(
    derived: pd.Series,
    recorded: pd.Series,
    allowed: Mapping[str, frozenset[str]],
    patients: pd.Series,
    issues: Issues,
    *,
    column: str,
) -> pd.Series:
    """Receptor-derived subtype wins; a recorded label is used only where receptors are missing and the
    label names exactly one canonical subtype. Labels incompatible with the receptors are reported."""
    out = derived.copy().astype(object)
    for idx, pid in zip(derived.index, patients):
        label = recorded.loc[idx]
        if is_blank(label):
            continue
        key = norm_key(label)
        if key not in allowed:
            issues.add(pid, "subtype", label, f"unknown code {label!r} in column {column!r}; left missing")
            continue
        options = allowed[key]
        if isinstance(derived.loc[idx], str):
            if derived.loc[idx] not in options:
                issues.add(pid, "subtype", label,
                           f"recorded {column} {label!r} conflicts with receptors (HR/HER2 -> "
                           f"{derived.loc[idx]!r}); receptor-derived subtype kept")
        elif len(options) == 1:
            out.loc[idx] = next(iter(options))
    return out


# ---------------------------------------------------------------- anti-HER2 agents in treatment arms

ANTI_HER2_AGENTS: frozenset[str] = frozenset({"trastuzumab", "pertuzumab", "neratinib", "t-dm1", "lapatinib"})
OTHER_AGENTS: frozenset[str] = frozenset({
    "paclitaxel", "amg 386", "ganitumab", "ganetespib", "abt 888", "carboplatin", "pembrolizumab", "mk-2206",
    "anthracycline", "taxane", "taxane (incomplete)", "fec100",
})


def anti_her2_from_agents(arms: pd.Series, patients: pd.Series, issues: Issues, *, column: str,
                          complete_regimen: bool) -> pd.Series:
    """1 if the arm / agent list names an anti-HER2 drug; 0 only when ``complete_regimen`` (the arm is the
    whole regimen, as in I-SPY2) and every agent is known; an unknown agent -> NaN plus an issue."""
    out = []
    for pid, arm in zip(patients, arms):
        if is_blank(arm):
            out.append(np.nan)
            continue
        agents = [a.strip().casefold() for a in str(arm).split("+") if a.strip()]
        if any(a in ANTI_HER2_AGENTS for a in agents):
            out.append(1.0)
            continue
        unknown = [a for a in agents if a not in OTHER_AGENTS]
        if unknown:
            issues.add(pid, "anti_her2", arm, f"unknown agent(s) {unknown} in column {column!r}; anti_her2 left missing")
            out.append(np.nan)
        else:
            out.append(0.0 if complete_regimen else np.nan)
    return pd.Series(out, index=arms.index, dtype=float)


# ---------------------------------------------------------------- menopause text

def menopause_from_text(values: pd.Series, patients: pd.Series, issues: Issues, *, column: str) -> pd.Series:
    """pre.../peri... -> 0, post... -> 1 (by leading word); 'Above categories not applicable ...' -> NaN
    (a known I-SPY2 code with no status); anything else -> NaN plus an issue."""
    out = []
    for pid, raw in zip(patients, values):
        if is_blank(raw):
            out.append(np.nan)
            continue
        text = str(raw).strip().casefold()
        if text.startswith(("postmenopausal", "post ", "post(")) or text == "post":
            out.append(1.0)
        elif text.startswith(("premenopausal", "perimenopausal", "pre ", "pre(", "peri ", "peri(")) or text in (
                "pre", "peri"):
            out.append(0.0)
        elif text.startswith("above categories not applicable"):
            out.append(np.nan)
        else:
            issues.add(pid, "menopause", raw, f"unknown code {raw!r} in column {column!r}; left missing")
            out.append(np.nan)
    return pd.Series(out, index=values.index, dtype=float)


# ---------------------------------------------------------------- finishing a canonical table

def finish(
    cols: dict[str, Any],
    patients: pd.Series,
    rows: pd.Series,
    *,
    source: str,
    pcr_definition: str,
    issues: Issues,
) -> pd.DataFrame:
    """Assemble canonical columns, derive ``hr``/``subtype`` where missing, check IDs.

    Empty IDs: reported, row kept with empty ``patient_id``. Duplicate IDs (same :func:`id_key`):
    reported, first row kept.
    """
    from common.preprocess.clinical import id_key  # local import: clinical.py imports this module

    n = len(patients)
    index = patients.index
    frame = pd.DataFrame(index=index)
    for name in CANONICAL_COLUMNS:
        value = cols.get(name, np.nan)
        frame[name] = value if isinstance(value, pd.Series) else pd.Series([value] * n, index=index, dtype=object)
    ids = [None if is_blank(p) else str(p).strip() for p in patients]
    frame["patient_id"] = pd.Series(ids, index=index, dtype=object)
    frame["source"] = source
    frame["pcr_definition"] = pcr_definition
    for name in ("age", "menopause", "er", "pr", "her2", "hr", "grade", "t_stage", "n_stage", "nac", "anti_her2",
                 "pcr"):
        frame[name] = numeric(frame[name])
    no_nac = frame["pcr"].notna() & (frame["nac"] == 0)
    for idx in frame.index[no_nac]:
        issues.add(frame.at[idx, "patient_id"], "pcr", frame.at[idx, "pcr"],
                   "pCR recorded for a patient without neoadjuvant chemotherapy; no label")
    frame.loc[no_nac, "pcr"] = np.nan
    missing_hr = frame["hr"].isna()
    frame.loc[missing_hr, "hr"] = hr_from_er_pr(frame["er"], frame["pr"])[missing_hr]
    sub = frame["subtype"].astype(object)
    missing_sub = sub.isna()
    sub[missing_sub] = subtype_from_receptors(frame["hr"], frame["her2"])[missing_sub]
    bad = sub.notna() & ~sub.isin(SUBTYPES)
    for idx in frame.index[bad]:
        issues.add(frame.at[idx, "patient_id"], "subtype", sub[idx], "not a canonical subtype; left missing")
    sub[bad] = np.nan
    frame["subtype"] = sub
    keep = np.ones(n, dtype=bool)
    seen: dict[str, int] = {}
    for i, (pid, row) in enumerate(zip(ids, rows)):
        if pid is None:
            issues.add(f"(row {row})", "patient_id", patients.iloc[i],
                       f"empty patient ID in source row {row}; row kept without an ID")
            continue
        key = id_key(pid)
        if key in seen:
            issues.add(pid, "patient_id", pid,
                       f"duplicate patient ID (source row {row} repeats row {seen[key]}); first row kept")
            keep[i] = False
        else:
            seen[key] = row
    return frame.loc[keep, list(CANONICAL_COLUMNS)].reset_index(drop=True)


# ---------------------------------------------------------------- raw reading

def read_header_table(path: Path, header_row: int = 0, sheet: str | int | None = None, skip: int = 0,
                      book: pd.ExcelFile | None = None) -> pd.DataFrame:
    """Read an xlsx sheet or CSV with the column names on ``header_row`` (0-based), ``skip`` more header
    rows after it; fully blank rows are dropped; the index is the 0-based sheet/CSV row."""
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        raw = pd.read_excel(book if book is not None else path, sheet_name=0 if sheet is None else sheet, header=None)
    else:
        raw = pd.read_csv(path, header=None, dtype=object, keep_default_na=False, sep=None, engine="python",
                          encoding="utf-8-sig")
    names = [str(c).strip() if not is_blank(c) else f"_col{i}" for i, c in enumerate(raw.iloc[header_row])]
    data = raw.iloc[header_row + 1 + skip:].copy()
    data.columns = names
    return data[~data.map(is_blank).all(axis=1)]


def source_rows(data: pd.DataFrame) -> pd.Series:
    """1-based spreadsheet / CSV line numbers of ``data``'s rows (for messages)."""
    return pd.Series([int(i) + 1 for i in data.index], index=data.index)


def column(data: pd.DataFrame, name: str, field_: str, issues: Issues, path: Path) -> pd.Series:
    """A named column, or an all-missing one plus a single issue when the table lacks it."""
    if name in data.columns:
        col = data[name]
        return col.iloc[:, 0] if isinstance(col, pd.DataFrame) else col
    issues.add("*", field_, None, f"column {name!r} not found in {path.name}; {field_} left missing")
    return pd.Series([np.nan] * len(data), index=data.index, dtype=object)


def require(data: pd.DataFrame, name: str, path: Path) -> pd.Series:
    """A column the adapter cannot work without (the patient ID)."""
    if name not in data.columns:
        raise ValueError(f"{path}: required column {name!r} not found (columns: {list(data.columns)[:12]}...)")
    col = data[name]
    return col.iloc[:, 0] if isinstance(col, pd.DataFrame) else col


# ---------------------------------------------------------------- Duke

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


# ---------------------------------------------------------------- I-SPY2 (TCIA table)

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


# ---------------------------------------------------------------- I-SPY1

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


# ---------------------------------------------------------------- MAMA-MIA

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
