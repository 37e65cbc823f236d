"""Rules shared by every clinical adapter: code mapping, numeric parsing, ID checks, subtype derivation.

The per-collection adapters (``clinical_duke``, ``clinical_ispy2``, ``clinical_ispy1``,
``clinical_mama_mia``) and the YAML-mapped hospital adapter (``clinical_mapping``) read their tables
through these helpers, so an unknown code becomes NaN plus an issue (never a guess) everywhere, and
return canonical columns (``common.schema.CANONICAL_COLUMNS``).
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

from common.patient_id import id_key
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
