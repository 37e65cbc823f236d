"""Match the DICOM patients of a site to their clinical row, tumour box and clinical issues, and decide
per patient: process it, reuse its cached volume, or skip it with a reason naming the file or field.

Patients are matched by ``common.patient_id.id_key`` (the one patient-ID rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from common.config import PrepConfig
from common.patient_id import id_key
from common.preprocess.annotations import Annotation
from common.preprocess.dicom_headers import SliceHeader

#: ``ignored_files`` reasons that mean a broken DICOM file (not a stray non-DICOM file).
_BROKEN = ("unreadable DICOM", "malformed header", "incomplete MR header")


@dataclass
class Plan:
    """What to do with each DICOM patient: ``jobs`` (process_patient arguments), ``reused``, ``skipped``."""

    jobs: list[tuple] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: id_key -> clinical row (the last one when several share a key; those patients are skipped)
    clinical: dict[str, pd.Series] = field(default_factory=dict)


@dataclass
class _Context:
    """Everything the per-patient decision reads."""

    cfg: PrepConfig
    clinical_src: str
    boxes_src: str
    clin_by_key: dict[str, pd.Series]
    dup_keys: set[str]
    issues_by_key: dict[str, list[dict[str, Any]]]
    box_map: dict[str, Annotation]
    skip_on_clinical_issue: bool
    keep_unlabelled: bool


def _clinical_index(table: pd.DataFrame, issues: list[dict[str, Any]]
                    ) -> tuple[dict[str, pd.Series], set[str], dict[str, list[dict[str, Any]]]]:
    """Clinical rows and issues by patient key; keys held by several rows."""
    clin_by_key: dict[str, pd.Series] = {}
    dup_keys: set[str] = set()
    for _, r in table.iterrows():
        k = id_key(str(r["patient_id"]))
        if k in clin_by_key:
            dup_keys.add(k)
        clin_by_key[k] = r
    issues_by_key: dict[str, list[dict[str, Any]]] = {}
    for it in issues:
        if str(it.get("patient", "") or ""):
            issues_by_key.setdefault(id_key(str(it["patient"])), []).append(it)
    return clin_by_key, dup_keys, issues_by_key


def _broken_files(patients: dict[str, list[SliceHeader]], ignored: list[dict[str, str]]) -> dict[str, list[str]]:
    """Patient -> unreadable DICOM files in folders that hold only that patient's images (its series are
    then incomplete, so the patient is skipped naming the file), and unreadable folders (entries with a
    ``folder`` key) whose parent folder holds only that patient's images."""
    bad_by_dir: dict[str, list[str]] = {}
    bad_folders = []
    for d in ignored:
        if d.get("folder"):
            bad_folders.append(d["file"])
        elif d["reason"].startswith(_BROKEN):
            bad_by_dir.setdefault(os.path.dirname(d["file"]), []).append(d["file"])
    dir_patients: dict[str, set[str]] = {}
    for pid, hs in patients.items():
        for h in hs:
            dir_patients.setdefault(os.path.dirname(h.path), set()).add(pid)
    out = {pid: sorted({f for dr in {os.path.dirname(h.path) for h in hs} if dir_patients.get(dr) == {pid}
                        for f in bad_by_dir.get(dr, [])}) for pid, hs in patients.items()}
    for folder in bad_folders:
        parent = os.path.dirname(folder) + os.sep
        owners = {pid for dr, pids in dir_patients.items() if (dr + os.sep).startswith(parent) for pid in pids}
        if len(owners) == 1:
            out[owners.pop()].append(folder)
    return out


def _clinical_reason(pid: str, key: str, ctx: _Context) -> str | None:
    """Why the clinical side or the tumour box rules this patient out, or None."""
    src = ctx.clinical_src
    row = ctx.clin_by_key.get(key)
    if row is None:
        return f"no clinical row in {src} for PatientID {pid} (key {key})"
    if key in ctx.dup_keys:
        return f"several clinical rows in {src} match PatientID {pid}"
    pat_issues = [i for i in ctx.issues_by_key.get(key, []) if i.get("field") != "Annotation_Boxes"]
    if pat_issues and ctx.skip_on_clinical_issue:
        text = "; ".join(f"field {i.get('field')}={i.get('value')!r}: {i.get('reason')}" for i in pat_issues)
        return f"clinical issue in {src}: {text}"
    if pd.isna(_label(row)) and not ctx.keep_unlabelled:
        return f"no pCR label (pcr empty) in {src} for {pid}"
    if ctx.box_map.get(key) is None and ctx.cfg.crop == "tumour" and ctx.cfg.localisation == "annotation":
        bi = [i["reason"] for i in ctx.issues_by_key.get(key, []) if i.get("field") == "Annotation_Boxes"]
        why = f" ({bi[0]})" if bi else ""
        return f"no tumour box for {pid} in {ctx.boxes_src}{why} (crop='tumour', localisation='annotation')"
    return None


def _label(row: pd.Series) -> Any:
    return pd.to_numeric(pd.Series([row.get("pcr")]), errors="coerce").iloc[0]


def plan_jobs(patients: dict[str, list[SliceHeader]], table: pd.DataFrame, issues: list[dict[str, Any]],
              box_map: dict[str, Annotation], ignored: list[dict[str, str]], done: set[str], cfg: PrepConfig, *,
              clinical_src: str, boxes_src: str, site: str | None, default_site: str, out: str,
              skip_on_clinical_issue: bool, keep_unlabelled: bool) -> Plan:
    """Decide for every DICOM patient (sorted): a ``process_patient`` job, reuse (``done`` = valid in the
    cache already) or a skip with its reason."""
    clin_by_key, dup_keys, issues_by_key = _clinical_index(table, issues)
    ctx = _Context(cfg, clinical_src, boxes_src, clin_by_key, dup_keys, issues_by_key, box_map,
                   skip_on_clinical_issue, keep_unlabelled)
    broken = _broken_files(patients, ignored)
    plan = Plan(clinical=clin_by_key)
    for pid in sorted(patients):
        key = id_key(pid)
        reason = _clinical_reason(pid, key, ctx)
        bad = broken[pid]
        if reason is None and bad:
            entry = next(d for d in ignored if d["file"] == bad[0])
            what = "folder" if entry.get("folder") else "DICOM file"
            reason = (f"unreadable {what} {bad[0]} ({entry['reason']}) among the series files of {pid}"
                      + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
        if reason is not None:
            plan.skipped.append({"patient": pid, "reason": reason})
            continue
        if pid in done:
            plan.reused.append(pid)
            continue
        hs, row = patients[pid], clin_by_key[key]
        site_name = site or next((h.trial_site for h in hs if h.trial_site), "") or str(row.get("site") or "") \
            or default_site
        label = _label(row)
        plan.jobs.append((pid, hs, cfg, box_map.get(key), out, site_name, None if pd.isna(label) else float(label)))
    return plan


__all__ = ["Plan", "plan_jobs"]
