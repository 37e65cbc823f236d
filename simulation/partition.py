"""Which patient belongs to which site: MAMA-MIA ``site`` column, DICOM ClinicalTrialSiteID, or scanner.

A *site* is the unit that trains as one federated client and that can be held out as an unseen
institution. Small sites can be grouped so that no client is too small to train or test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from common.site_cache import CLINICAL, KINETICS, MANIFEST, VOLUMES, read_prep_config, read_table, \
    write_cache_tables

#: How a patient is assigned to a site.
PARTITION_KEYS: tuple[str, ...] = ("site", "trial_site", "scanner", "collection")


@dataclass(frozen=True)
class Partition:
    """``sites[site] = [patient ids]`` plus the grouping that produced it (``groups[site] = original sites``)."""

    sites: dict[str, list[str]]
    groups: dict[str, list[str]]
    key: str

    def site_of(self) -> dict[str, str]:
        """Patient id -> site."""
        return {pid: site for site, ids in self.sites.items() for pid in ids}

    def sizes(self) -> dict[str, int]:
        return {site: len(ids) for site, ids in self.sites.items()}


def group_small_sites(assign: dict[str, str], min_site_size: int, group_name: str = "SMALL",
                      keep: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Merge every site with fewer than ``min_site_size`` patients into one ``group_name`` site.

    Sites in ``keep`` are never merged (e.g. a named held-out institution). Returns the new assignment
    and ``{new_site: [original sites]}``. A lone small site is kept under its own name when grouping
    would not make it any bigger.
    """
    counts = Counter(assign.values())
    keep = set(keep)
    small = sorted(s for s, n in counts.items() if n < min_site_size and s not in keep)
    groups = {s: [s] for s in counts if s not in small}
    if len(small) == 1:
        groups[small[0]] = small
        return dict(assign), groups
    if small:
        if group_name in counts:
            raise ValueError(f"group name {group_name!r} collides with a real site name")
        groups[group_name] = small
    small_set = set(small)
    return {pid: (group_name if s in small_set else s) for pid, s in assign.items()}, groups


def make_partition(assign: dict[str, str], *, key: str, min_site_size: int = 0,
                   keep: Iterable[str] = ()) -> Partition:
    """Build a :class:`Partition` from ``patient -> site`` (grouping sites under ``min_site_size``)."""
    new, groups = group_small_sites(assign, min_site_size, keep=keep) if min_site_size > 0 else (
        dict(assign), {s: [s] for s in set(assign.values())})
    sites: dict[str, list[str]] = {}
    for pid, site in sorted(new.items()):
        sites.setdefault(site, []).append(pid)
    return Partition(sites=dict(sorted(sites.items())), groups=dict(sorted(groups.items())), key=key)


def assign_from_table(table: pd.DataFrame, by: str = "site", id_column: str = "patient_id") -> dict[str, str]:
    """``patient -> site`` from a table: MAMA-MIA (``site``, ``dataset``, ``manufacturer``/``scanner_model``)
    or a prepared cache's manifest (``site``, ``manufacturer``, ``model``).

    ``by``: ``site`` / ``trial_site`` (the site column), ``collection`` (``dataset`` column),
    ``scanner`` (manufacturer + model). Rows without a value are left out and listed in the error
    message only if nothing is left.
    """
    if by not in PARTITION_KEYS:
        raise ValueError(f"unknown partition key {by!r}; known: {PARTITION_KEYS}")
    if by in ("site", "trial_site"):
        col = _first_column(table, ("site", "ClinicalTrialSiteID", "trial_site"))
        values = table[col].astype("string")
    elif by == "collection":
        col = _first_column(table, ("dataset", "collection", "source"))
        values = table[col].astype("string")
    else:
        man = _first_column(table, ("manufacturer", "Manufacturer"))
        model_col = next((c for c in ("scanner_model", "model", "ManufacturerModelName") if c in table), None)
        values = table[man].astype("string").str.strip()
        if model_col is not None:
            values = values + " " + table[model_col].astype("string").fillna("").str.strip()
    ids = table[id_column].astype(str)
    out = {pid: str(v).strip() for pid, v in zip(ids, values) if pd.notna(v) and str(v).strip()}
    if not out:
        raise ValueError(f"no patient has a value in the {by!r} partition column(s) of the table")
    return out


def _first_column(table: pd.DataFrame, names: tuple[str, ...]) -> str:
    for n in names:
        if n in table.columns:
            return n
    raise ValueError(f"table has none of the columns {names} needed to partition; it has {list(table.columns)}")


def assign_from_dicom(root: Path, by: str = "trial_site") -> dict[str, str]:
    """``PatientID -> site`` from one DICOM header per patient folder under ``root``.

    ``trial_site`` reads ClinicalTrialSiteID (0012,0030); ``scanner`` reads Manufacturer +
    ManufacturerModelName. Patients whose headers lack the tag are reported on stderr and skipped.
    """
    import sys

    import pydicom

    root = Path(root)
    out: dict[str, str] = {}
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        header = None
        for f in sorted(patient_dir.rglob("*")):
            if not f.is_file():
                continue
            try:
                header = pydicom.dcmread(f, stop_before_pixels=True)
                break
            except Exception:  # noqa: BLE001 - not a DICOM file: try the next one
                continue
        if header is None:
            print(f"partition: {patient_dir}: no readable DICOM file, patient skipped", file=sys.stderr)
            continue
        pid = str(getattr(header, "PatientID", "") or patient_dir.name)
        if by == "trial_site":
            value = str(getattr(header, "ClinicalTrialSiteID", "") or "").strip()
        elif by == "scanner":
            value = f"{getattr(header, 'Manufacturer', '')} {getattr(header, 'ManufacturerModelName', '')}".strip()
        else:
            raise ValueError(f"DICOM partition supports 'trial_site' or 'scanner', not {by!r}")
        if not value:
            print(f"partition: {patient_dir}: no {by} value in DICOM header, patient skipped", file=sys.stderr)
            continue
        out[pid] = value
    if not out:
        raise ValueError(f"no patient under {root} has a {by!r} value in its DICOM headers")
    return out


def split_caches(sources: list[Path], assign: dict[str, str], out_root: Path) -> dict[str, Path]:
    """Write one site cache per site from prepared collection caches (format: ``common.site_cache``).

    ``assign`` maps patient id (manifest ``patient_id``) to site. Volumes are linked, not copied; the
    manifest/clinical/kinetics rows are filtered and ``site`` is set to the partition's site. Patients
    not in ``assign`` are left out (reported on stderr). Source caches are never modified. Each site
    cache is built in a temporary folder next to its destination (every file written atomically) and
    then moved into place, so a reader never sees a half-written cache.
    """
    frames: dict[str, dict[str, list[pd.DataFrame]]] = {}
    prep: dict | None = None
    vol_src: dict[tuple[str, str], Path] = {}
    for src in map(Path, sources):
        cfg = read_prep_config(src)
        if prep is not None and cfg.get("hash") != prep.get("hash"):
            raise ValueError(f"{src}: prep hash {cfg.get('hash')} differs from {prep.get('hash')}; "
                             "prepare every collection with the same PrepConfig")
        prep = cfg
        tables = _site_tables(src, assign)
        man = tables[MANIFEST]
        for site in sorted(set(man["site"])):
            ids = set(man.loc[man["site"] == site, "patient_id"])
            for name, t in tables.items():
                frames.setdefault(site, {}).setdefault(name, []).append(t[t["patient_id"].isin(ids)])
        for pid, rel in zip(man["patient_id"], man["volume"]):
            vol_src[(assign[pid], str(rel))] = src / str(rel)
    if prep is None:
        raise ValueError("split_caches: no source caches given")
    out = {site: _write_site(Path(out_root), site, tables, prep,
                             {rel: f for (s, rel), f in vol_src.items() if s == site})
           for site, tables in frames.items()}
    return dict(sorted(out.items()))


def _site_tables(src: Path, assign: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The manifest (and clinical/kinetics when present) rows of ``src`` whose patient has a site."""
    import sys

    man = read_table(src, MANIFEST)
    unknown = sorted(set(man["patient_id"]) - set(assign))
    if unknown:
        print(f"partition: {src}: {len(unknown)} patient(s) without a site left out, e.g. {unknown[:3]}",
              file=sys.stderr)
    man = man[man["patient_id"].isin(assign)].copy()
    man["site"] = man["patient_id"].map(assign)
    tables = {MANIFEST: man}
    for name in (CLINICAL, KINETICS):
        if (src / name).is_file():
            t = read_table(src, name)
            t = t[t["patient_id"].isin(man["patient_id"])].copy()
            if name == CLINICAL and "site" in t.columns:
                t["site"] = t["patient_id"].map(assign)
            tables[name] = t
    return tables


def _write_site(out_root: Path, site: str, tables: dict[str, list[pd.DataFrame]], prep: dict,
                volumes: dict[str, Path]) -> Path:
    """Build one site cache in a temporary sibling folder, then swap it in for ``out_root/site``."""
    import os
    import shutil
    import tempfile

    dest = out_root / site
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{site}.", dir=out_root))
    try:
        (tmp / VOLUMES).mkdir()
        for rel, src_file in volumes.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src_file, target)
            except OSError:
                shutil.copy2(src_file, target)
        merged = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
        processed = list(merged[MANIFEST]["patient_id"])
        write_cache_tables(tmp, merged[MANIFEST], merged.get(CLINICAL),
                           merged.get(KINETICS), prep,
                           {"processed": processed, "skipped": [], "prep_hash": prep.get("hash")})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
