"""Any hospital's clinical CSV/xlsx into the canonical schema through a YAML column + value mapping.

The mapping names, per canonical field, the source column and (optionally) a table of source values ->
canonical values. A value the table does not list becomes NaN plus an ``unknown code`` issue: nothing is
guessed. See ``docs/clinical.md`` and ``docs/examples/hospital_mapping.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from common.preprocess.clinical_sources import (
    Issues,
    finish,
    is_blank,
    map_codes,
    norm_key,
    read_header_table,
    source_rows,
    to_number,
)
from common.schema import CANONICAL_COLUMNS, SUBTYPES

#: Fields a mapping may fill (``source`` and ``pcr_definition`` are set by the loader).
MAPPABLE_FIELDS: tuple[str, ...] = tuple(c for c in CANONICAL_COLUMNS if c not in ("source", "pcr_definition"))
_BINARY = ("menopause", "er", "pr", "her2", "hr", "nac", "anti_her2", "pcr")
#: Allowed canonical values per field (checked when the mapping is loaded, so a typo fails early).
_ALLOWED: dict[str, tuple[Any, ...]] = {
    **{f: (0, 1) for f in _BINARY},
    "subtype": SUBTYPES,
    "grade": (1, 2, 3),
    "t_stage": (0, 1, 2, 3, 4),
    "n_stage": (0, 1, 2, 3),
}
#: Numeric fields read as numbers when no value table is given, with their plausible range.
_RANGES: dict[str, tuple[float, float]] = {"age": (10.0, 110.0)}
#: Age unit transforms: source unit -> years.
AGE_UNITS: dict[str, float] = {"years": 1.0, "months": 1.0 / 12.0, "days": 1.0 / 365.25, "negative_days": -1.0 / 365.25}


@dataclass(frozen=True)
class ClinicalMapping:
    """A parsed YAML mapping: ``columns`` canonical field -> source column, ``values`` per-field code tables."""

    columns: dict[str, str]
    values: dict[str, dict[Any, Any]] = field(default_factory=dict)
    age_unit: str = "years"
    pcr_definition: str | None = None
    site: str | None = None
    sheet: str | int | None = None
    header_row: int = 0
    origin: str = "mapping"


class _NoBoolLoader(yaml.SafeLoader):
    """SafeLoader that keeps ``yes``/``no``/``on``/``off``/``true``/``false`` as text (they are codes here)."""


_NoBoolLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_KEYS = {"columns", "values", "transforms", "pcr_definition", "site", "sheet", "header_row", "description"}


def parse_mapping(mapping: str | Path | dict[str, Any]) -> ClinicalMapping:
    """Load and validate a mapping (YAML path or dict); errors name the offending key."""
    origin = "mapping"
    if isinstance(mapping, (str, Path)):
        origin = str(mapping)
        try:
            data = yaml.load(Path(mapping).read_text(), Loader=_NoBoolLoader) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read clinical mapping {mapping}: {exc}") from exc
    else:
        data = dict(mapping)
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: a clinical mapping must be a YAML mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    columns = {str(k): str(v) for k, v in (data.get("columns") or {}).items()}
    bad = set(columns) - set(MAPPABLE_FIELDS)
    if bad:
        raise ValueError(f"{origin}: columns: unknown canonical field(s) {sorted(bad)}; known: {list(MAPPABLE_FIELDS)}")
    if "patient_id" not in columns:
        raise ValueError(f"{origin}: columns: 'patient_id' (the source ID column) is required")
    values: dict[str, dict[Any, Any]] = {}
    for fld, table in (data.get("values") or {}).items():
        if fld not in columns:
            raise ValueError(f"{origin}: values: field {fld!r} has no entry under 'columns'")
        if not isinstance(table, dict):
            raise ValueError(f"{origin}: values: {fld!r} must map source values to canonical values")
        for src, dst in table.items():
            if dst is None:
                continue
            allowed = _ALLOWED.get(fld)
            if allowed is not None and norm_key(dst) not in {norm_key(a) for a in allowed}:
                raise ValueError(f"{origin}: values: {fld}: {src!r} -> {dst!r} is not a canonical value "
                                 f"(allowed: {list(allowed)} or null)")
        values[fld] = dict(table)
    transforms = data.get("transforms") or {}
    unit = str(transforms.get("age", "years"))
    if set(transforms) - {"age"} or unit not in AGE_UNITS:
        raise ValueError(f"{origin}: transforms: only 'age' with a unit in {list(AGE_UNITS)} is supported")
    return ClinicalMapping(columns=columns, values=values, age_unit=unit, pcr_definition=data.get("pcr_definition"),
                           site=data.get("site"), sheet=data.get("sheet"), header_row=int(data.get("header_row", 0)),
                           origin=origin)


def _canonical_value(fld: str, value: Any) -> Any:
    """Cast a mapped canonical value: numbers for numeric fields, text for subtype/site."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if fld in ("subtype", "site"):
        return str(value)
    return float(value)


def load_mapped(path: Path, mapping: str | Path | dict[str, Any] | ClinicalMapping, site: str | None,
                issues: Issues) -> pd.DataFrame:
    """Read a hospital table through ``mapping`` into canonical columns (source ``csv``)."""
    m = mapping if isinstance(mapping, ClinicalMapping) else parse_mapping(mapping)
    data = read_header_table(path, header_row=m.header_row, sheet=m.sheet)
    missing = [c for c in m.columns.values() if c not in data.columns]
    if m.columns["patient_id"] in missing:
        raise ValueError(f"{path}: ID column {m.columns['patient_id']!r} (mapping {m.origin}) not found; "
                         f"columns: {list(data.columns)}")
    rows = source_rows(data)
    pid = data[m.columns["patient_id"]]
    label = pid.where(pid.map(lambda v: not is_blank(v)), rows.map(lambda r: f"(row {r})"))
    cols: dict[str, Any] = {}
    for fld, src in m.columns.items():
        if fld == "patient_id":
            continue
        if src in missing:
            issues.add("*", fld, None, f"column {src!r} (mapping {m.origin}) not found in {path.name}; {fld} left missing")
            continue
        raw = data[src]
        if fld in m.values:
            mapped = map_codes(raw, label, fld, m.values[fld], issues, column=src)
            cols[fld] = mapped.map(lambda v, f=fld: _canonical_value(f, v))
        elif fld == "age":
            lo, hi = _RANGES["age"]
            factor = AGE_UNITS[m.age_unit]
            years = to_number(raw, label, fld, issues, column=src) * factor
            bad = years.notna() & ~years.between(lo, hi)
            for idx in years.index[bad]:
                issues.add(label[idx], fld, raw[idx], f"age {years[idx]:.1f} years from column {src!r} outside "
                           f"[{lo}, {hi}]; left missing")
            cols[fld] = years.where(~bad)
        elif fld == "site":
            cols[fld] = raw.map(lambda v: np.nan if is_blank(v) else str(v).strip())
        else:  # no value table: the source must already hold canonical values
            allowed = _ALLOWED[fld]
            identity = {a: a for a in allowed}
            mapped = map_codes(raw, label, fld, identity, issues, column=src)
            cols[fld] = mapped.map(lambda v, f=fld: _canonical_value(f, v))
    default_site = site or m.site or path.parent.name
    site_col = cols.get("site")
    cols["site"] = site_col.fillna(default_site) if isinstance(site_col, pd.Series) else default_site
    definition = m.pcr_definition
    if not definition:
        definition = f"as recorded by the site (no pcr_definition in {m.origin})"
        issues.add("*", "pcr_definition", None, f"mapping {m.origin} states no pcr_definition")
    return finish(cols, pid, rows, source="csv", pcr_definition=str(definition), issues=issues)
