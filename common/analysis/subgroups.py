"""Subgroup AUROCs (MRP / Braman): molecular subtype, HR, HER2, menopausal status, field strength,
vendor and site, each level with the project's stratified-bootstrap 95 % CI (common.metrics).

Levels with too few patients of either class keep their counts and get no AUROC; a variable the site
does not hold is listed as unavailable. :func:`heldout_subgroups` does the same for the simulation
harness's per-held-out-institution predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.metrics import BootstrapConfig, binary_report

SUBGROUP_COLUMNS = ("subgroup", "level", "n", "n_pos", "auroc", "ci_low", "ci_high", "status")
_BOOT = BootstrapConfig()


@dataclass(frozen=True)
class SubgroupRules:
    """When a level gets an AUROC: at least ``min_n`` patients and ``min_per_class`` of each outcome."""

    min_n: int = 10
    min_per_class: int = 3


@dataclass(frozen=True)
class Variable:
    """A subgroup variable: name, table ("clinical" | "manifest"), column, value -> level label."""

    name: str
    table: str
    column: str
    label: Callable[[Any], str] | None = None


def _binary(neg: str, pos: str) -> Callable[[Any], str]:
    return lambda v: pos if float(v) == 1.0 else neg


def _field(v: Any) -> str:
    return f"{float(v):g} T"


VARIABLES: tuple[Variable, ...] = (
    Variable("molecular subtype", "clinical", "subtype"),
    Variable("HR status", "clinical", "hr", _binary("HR-", "HR+")),
    Variable("HER2 status", "clinical", "her2", _binary("HER2-", "HER2+")),
    Variable("menopausal status", "clinical", "menopause", _binary("pre/peri", "post")),
    Variable("field strength", "manifest", "field_strength", _field),
    Variable("vendor", "manifest", "manufacturer"),
    Variable("site", "manifest", "site"),
)


def _indexed(table: pd.DataFrame | None) -> pd.DataFrame | None:
    if table is None:
        return None
    t = table.set_index("patient_id", drop=False) if "patient_id" in table.columns else table
    t.index = t.index.astype(str)
    return t[~t.index.duplicated()]


def subgroup_attributes(ids: list[str], manifest: pd.DataFrame | None, clinical: pd.DataFrame | None,
                        variables: tuple[Variable, ...] = VARIABLES) -> pd.DataFrame:
    """Level labels per patient (rows = ``ids``, columns = variable names); a variable the site lacks
    entirely (no column, or no value for any patient) is left out."""
    tables = {"clinical": _indexed(clinical), "manifest": _indexed(manifest)}
    out = pd.DataFrame(index=pd.Index([str(i) for i in ids], name="patient_id"))
    for var in variables:
        t = tables[var.table]
        if t is None or var.column not in t.columns:
            continue
        raw = t[var.column].reindex(out.index)
        raw = raw.where(raw.astype(str).str.strip() != "")
        if raw.isna().all():
            continue
        out[var.name] = [np.nan if pd.isna(v) else (var.label(v) if var.label else str(v)) for v in raw]
    return out


def _level_row(name: str, level: str, y: np.ndarray, s: np.ndarray, rules: SubgroupRules, n_boot: int,
               seed: int) -> dict[str, Any]:
    n, n_pos = int(y.size), int(y.sum())
    row: dict[str, Any] = {"subgroup": name, "level": level, "n": n, "n_pos": n_pos,
                           "auroc": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if n < rules.min_n or min(n_pos, n - n_pos) < rules.min_per_class:
        row["status"] = f"too few (needs n >= {rules.min_n} and >= {rules.min_per_class} per class)"
        return row
    a = binary_report(y, s, 0.5, n_boot=n_boot, seed=seed)["auroc"]
    row.update(auroc=a["value"], ci_low=a["ci_low"], ci_high=a["ci_high"], status="ok")
    return row


def subgroup_table(y: np.ndarray, scores: np.ndarray, groups: pd.DataFrame, *, rules: SubgroupRules = SubgroupRules(),
                   n_boot: int = _BOOT.n_boot, seed: int = _BOOT.seed,
                   variables: Iterable[str] = tuple(v.name for v in VARIABLES)) -> pd.DataFrame:
    """Rows ``SUBGROUP_COLUMNS`` per level of each column of ``groups`` (rows aligned with ``y``); every name
    in ``variables`` missing from ``groups`` gets one ``unavailable`` row."""
    y = np.asarray(y, dtype=float).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    rows = []
    for name in list(dict.fromkeys([*variables, *groups.columns])):
        if name not in groups.columns:
            rows.append({"subgroup": name, "level": "", "n": 0, "n_pos": 0, "status": "unavailable at this site"})
            continue
        values = groups[name]
        for level in sorted(values.dropna().unique(), key=str):
            mask = (values == level).to_numpy()
            rows.append(_level_row(name, str(level), y[mask], scores[mask], rules, n_boot, seed))
        unknown = values.isna().to_numpy()
        if unknown.any():
            rows.append({"subgroup": name, "level": "unknown", "n": int(unknown.sum()), "n_pos": int(y[unknown].sum()),
                         "status": "value missing"})
    return pd.DataFrame(rows).reindex(columns=list(SUBGROUP_COLUMNS))


def subgroups_markdown(frame: pd.DataFrame, figure: str | None = None) -> list[str]:
    """Report section: subgroup table (AUROC with bootstrap 95 % CI) and the forest plot."""
    lines = ["## Subgroup analysis", "",
             "AUROC per subgroup with stratified-bootstrap 95% CI (the model and its threshold are unchanged; "
             "only the patients differ). Levels with too few patients of either outcome show counts only.", "",
             "| Subgroup | Level | n | pCR | AUROC (95% CI) | Note |", "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        au = "—" if pd.isna(r.auroc) else f"{r.auroc:.3f} ({r.ci_low:.3f}–{r.ci_high:.3f})"
        note = "" if r.status == "ok" else r.status
        lines.append(f"| {r.subgroup} | {r.level or '—'} | {r.n} | {r.n_pos} | {au} | {note} |")
    lines.append("")
    if figure:
        lines += [f"![Subgroup forest plot]({figure})", ""]
    return lines


# ---------------------------------------------------------------- simulation harness: held-out institutions


def attributes_from_caches(caches: Mapping[str, str | Path]) -> pd.DataFrame:
    """Subgroup levels of every patient of the named site caches, indexed ``"<site>/<patient_id>"`` (the
    harness's prediction ids)."""
    from common.data import load_cache

    parts = []
    for name, path in caches.items():
        cache = load_cache(path)
        ids = list(cache.manifest.index)
        attrs = subgroup_attributes(ids, cache.manifest, cache.clinical)
        attrs.index = [f"{name}/{pid}" for pid in ids]
        parts.append(attrs)
    return pd.concat(parts) if parts else pd.DataFrame()


def heldout_subgroups(predictions: Iterable[Mapping[str, Any]], attributes: pd.DataFrame, *,
                      rules: SubgroupRules = SubgroupRules(), n_boot: int = 500) -> pd.DataFrame:
    """Subgroup rows per held-out institution and method, averaged over seeds.

    ``predictions``: dicts with ``experiment, method, seed, test_site, ids, y, score`` (the harness's
    ``ArmResult.predictions[heldout_site]`` plus the arm's names); ``attributes`` from
    :func:`attributes_from_caches`. AUROC and CI bounds are means over seeds (as the harness reports them).
    """
    rows = []
    for p in predictions:
        ids = [str(i) for i in p["ids"]]
        # the site is one level by construction at a held-out institution
        groups = attributes.reindex(ids).drop(columns=["site"], errors="ignore").dropna(axis=1, how="all")
        variables = [v.name for v in VARIABLES if v.name != "site"]
        table = subgroup_table(np.asarray(p["y"], float), np.asarray(p["score"], float), groups, rules=rules,
                               n_boot=n_boot, seed=int(p["seed"]), variables=variables)
        for key in ("experiment", "test_site", "method", "seed"):
            table[key] = p[key]
        rows.append(table)
    if not rows:
        return pd.DataFrame()
    frame = pd.concat(rows, ignore_index=True)
    keys = ["experiment", "test_site", "method", "subgroup", "level"]
    return (frame.groupby(keys, sort=False, dropna=False)
            .agg(n=("n", "max"), n_pos=("n_pos", "max"), auroc=("auroc", "mean"), ci_low=("ci_low", "mean"),
                 ci_high=("ci_high", "mean"), seeds=("seed", "nunique"), status=("status", "first"))
            .reset_index())


def heldout_markdown(frame: pd.DataFrame) -> list[str]:
    """Report section: per held-out institution, levels x methods AUROC (CIs in the CSV)."""
    if frame.empty:
        return []
    r = SubgroupRules()
    lines = ["## Subgroups at the held-out institutions (AUROC, mean over seeds; CIs in `subgroups_heldout.csv`)", "",
             f"— = fewer than {r.min_n} patients or fewer than {r.min_per_class} of either outcome (counts only).", ""]
    for (exp, site), part in frame.groupby(["experiment", "test_site"], sort=False):
        methods = list(dict.fromkeys(part["method"]))
        lines += [f"### {exp} — {site}", "", "| Subgroup | Level | n | pCR | " + " | ".join(methods) + " |",
                  "|---|---|---|---|" + "---|" * len(methods)]
        for (sub, level), g in part.groupby(["subgroup", "level"], sort=False):
            by = dict(zip(g["method"], g["auroc"]))
            first = g.iloc[0]
            cells = ["—" if pd.isna(by.get(m)) else f"{by[m]:.3f}" for m in methods]
            lines.append(f"| {sub} | {level or 'unavailable'} | {first['n']} | {first['n_pos']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def heldout_section(arms: Iterable[Any], caches: Mapping[str, str | Path] | None, out_dir: Path,
                    heldout_site: Callable[[str], str]) -> str:
    """Hook for simulation/report.py: held-out predictions of ``arms`` -> ``subgroups_heldout.csv`` + markdown."""
    if not caches:
        return ""
    preds = [{"experiment": a.experiment, "method": a.method, "seed": a.seed, "test_site": heldout_site(a.experiment),
              **a.predictions[heldout_site(a.experiment)]}
             for a in arms if heldout_site(a.experiment) in a.predictions]
    if not preds:
        return ""
    frame = heldout_subgroups(preds, attributes_from_caches(caches))
    frame.to_csv(Path(out_dir) / "subgroups_heldout.csv", index=False)
    return "\n".join(heldout_markdown(frame)) + "\n"


__all__ = ["SUBGROUP_COLUMNS", "SubgroupRules", "VARIABLES", "attributes_from_caches", "heldout_markdown",
           "heldout_section", "heldout_subgroups", "subgroup_attributes", "subgroup_table", "subgroups_markdown"]
