"""``fedpcr prepare``: DICOM tree + clinical table -> harmonised site cache (docs/CONTRACTS.md §2).

Each patient runs alone (error isolation: a failure skips that patient with a precise reason and the
rest goes on), optionally in parallel processes. The source tree is only read. Re-running is
incremental: patients already in the cache with the same ``PrepConfig.hash()`` are kept as they are.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from common.config import AUTO_LOCALISATION, LOCALISATIONS, PHASE_NAMES, PrepConfig, to_dict
from common.parallel import map_with_progress
from common.patient_id import id_key
from common.preprocess.annotations import gather
from common.preprocess.dicom_headers import DicomError, SliceHeader, group_patients, walk_files
from common.preprocess.dicom_scan import scan_files
from common.preprocess.match import Plan, plan_jobs
from common.preprocess.patient import process_patient
from common.site_cache import KINETICS, KINETICS_COLUMNS, LATER_VISITS, MANIFEST, MANIFEST_COLUMNS, PREP_CONFIG, \
    VOLUMES, read_prep_hash, visit_columns, volume_path, write_cache_tables


@dataclass(frozen=True)
class PipelineOptions:
    """How ``prepare`` treats the clinical side (decided here; not part of the preprocessing hash)."""

    #: Skip a patient that ClinicalTable.issues names (unknown code, malformed row) rather than keep
    #: a row with a silently missing value.
    skip_on_clinical_issue: bool = True
    #: Keep patients without a pCR label (for a later evaluation-only mode); default: skip them.
    keep_unlabelled: bool = False


@dataclass
class PrepareResult:
    """What one ``prepare`` run did (also written to the cache's ``report.json``)."""

    processed: list[str]
    reused: list[str]
    skipped: list[dict[str, str]]
    ignored_files: list[dict[str, str]]
    clinical_issues: list[dict[str, Any]]
    prep_hash: str
    n_files: int = 0
    n_bytes: int = 0
    #: Folders (and dangling links) the scan could not read, with the reason.
    unreadable: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    scan_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"prepare: {len(self.processed)} patients in cache ({len(self.processed) - len(self.reused)} "
                 f"processed now, {len(self.reused)} reused), {len(self.skipped)} skipped, "
                 f"{len(self.ignored_files)} files ignored; {self.n_files} files / {self.n_bytes / 1e6:.1f} MB "
                 f"scanned in {self.scan_seconds:.1f}s; total {self.seconds:.1f}s; prep_hash {self.prep_hash}"]
        missing = self.extra.get("missing_visits", [])
        if missing:
            lines.append(f"  {len(missing)} patients without a requested later visit (kept; see report.json "
                         f"missing_visits), e.g. {missing[0]['patient']}: {missing[0]['reason']}")
        for u in self.unreadable[:20]:
            lines.append(f"  unreadable {u['folder']}: {u['reason']}")
        for s in self.skipped[:20]:
            lines.append(f"  skipped {s['patient']}: {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more in report.json")
        return "\n".join(lines)


def validate_config(cfg: PrepConfig) -> None:
    """Reject configs the pipeline cannot honour, naming the field."""
    if cfg.crop not in {"tumour", "breast"}:
        raise ValueError(f"PrepConfig.crop must be 'tumour' or 'breast', got {cfg.crop!r}")
    if cfg.localisation not in LOCALISATIONS:
        raise ValueError(f"PrepConfig.localisation must be one of {', '.join(LOCALISATIONS)}, got {cfg.localisation!r}")
    if cfg.auto_localisation != AUTO_LOCALISATION:
        raise ValueError(f"PrepConfig.auto_localisation {cfg.auto_localisation!r}: this version implements "
                         f"{AUTO_LOCALISATION!r} only (caches of other versions are not comparable)")
    if cfg.standardise not in {"zscore_body", "none"}:
        raise ValueError(f"PrepConfig.standardise must be 'zscore_body' or 'none', got {cfg.standardise!r}")
    if cfg.interpolator not in {"linear", "bspline"}:
        raise ValueError(f"PrepConfig.interpolator must be 'linear' or 'bspline', got {cfg.interpolator!r}")
    if len(cfg.shape) != 3 or min(cfg.shape) < 1 or cfg.spacing_mm <= 0:
        raise ValueError(f"PrepConfig.shape/spacing_mm invalid: {cfg.shape}, {cfg.spacing_mm}")
    if not cfg.visits or cfg.visits[0] != "pre" or len(set(cfg.visits)) != len(cfg.visits) or \
            any(v not in LATER_VISITS for v in cfg.visits[1:]):
        raise ValueError(f"PrepConfig.visits must be 'pre' followed by later visits among {', '.join(LATER_VISITS)} "
                         f"(each once), got {list(cfg.visits)}")
    if len(cfg.visits) > 1 and cfg.visit != "pre":
        raise ValueError(f"PrepConfig.visits {list(cfg.visits)} needs the baseline visit 'pre', but PrepConfig.visit "
                         f"is {cfg.visit!r}")
    for ch in cfg.channels:
        if ch not in PHASE_NAMES and ch != "t2" and not re.fullmatch(r"sub\d+", ch):
            raise ValueError(f"PrepConfig.channels: unknown channel {ch!r} (pre, postK, subK, t2)")


def _job(args: tuple) -> dict[str, Any]:
    pid = args[0]
    try:
        return process_patient(*args)
    except (DicomError, ValueError) as exc:
        return {"error": str(exc), "patient": pid}
    except Exception as exc:  # error isolation: one patient never stops the site
        return {"error": f"patient {pid}: unexpected {type(exc).__name__}: {exc}", "patient": pid}


def _job_crashed(args: tuple, why: str) -> dict[str, Any]:
    """The result of a patient whose worker process died (segfault in a codec, out of memory, killed)."""
    return {"error": f"patient {args[0]}: {why} while it was being prepared ({len(args[1])} DICOM files)",
            "patient": args[0]}


def _scan_crashed(chunk: list[str], why: str) -> tuple[list[SliceHeader], list[dict[str, str]], int]:
    return [], [{"file": f, "reason": f"unreadable DICOM ({why} while reading headers of this batch)"}
                for f in chunk], 0


def _scan(files: list[str], workers: int, progress: bool) -> tuple[list[SliceHeader], list[dict[str, str]], int]:
    heads: list[SliceHeader] = []
    ignored: list[dict[str, str]] = []
    n_bytes = 0
    if workers > 1 and len(files) > 200:
        n_chunks = workers * 8
        chunks = [files[i::n_chunks] for i in range(n_chunks)]
    else:
        chunks = [files[i:i + 500] for i in range(0, len(files), 500)]
    parts = map_with_progress(scan_files, chunks, workers=workers if len(files) > 200 else 1,
                              desc="scan DICOM headers", unit="batch", progress=progress, on_crash=_scan_crashed)
    for h, ig, nb in parts:
        heads += h
        ignored += ig
        n_bytes += nb
    ignored.sort(key=lambda d: d["file"])
    return heads, ignored, n_bytes


def _load_clinical(path: Path | None, fmt: str | None, mapping: Path | None, site: str | None
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    if path is None:
        from common.schema import empty_canonical

        return empty_canonical(), []
    from common.preprocess.clinical import load_clinical

    ct = load_clinical(path, fmt=fmt, mapping=mapping, site=site)
    return ct.table.copy(), list(ct.issues)


def _previous(out: Path, prep_hash: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and kinetics rows of the existing cache that are still valid for ``prep_hash``."""
    man_path, kin_path, cfg_path = out / MANIFEST, out / KINETICS, out / PREP_CONFIG
    empty = pd.DataFrame(columns=list(MANIFEST_COLUMNS)), pd.DataFrame(columns=list(KINETICS_COLUMNS))
    if not (man_path.exists() and cfg_path.exists()):
        return empty
    try:
        old_hash = read_prep_hash(out)
        man = pd.read_csv(man_path, dtype={"patient_id": str, "label": str}, keep_default_na=False)
        kin = pd.read_csv(kin_path, dtype={"patient_id": str}) if kin_path.exists() else empty[1]
    except Exception:
        return empty
    if old_hash != prep_hash:
        return empty
    ok = (man["prep_hash"].astype(str) == prep_hash) & man["volume"].map(lambda v: (out / str(v)).exists())
    for visit in LATER_VISITS:  # a later visit's volume recorded but gone: prepare the patient again
        col = visit_columns(visit)[0]
        if col in man.columns:
            ok &= man[col].astype(str).map(lambda v: v in ("", "nan") or (out / v).exists())
    man = man[ok]
    kin = kin[kin["patient_id"].isin(set(man["patient_id"]))]
    return man, kin


def run_prepare(dicom: str | Path, clinical: str | Path | None, out: str | Path, cfg: PrepConfig = PrepConfig(),
                *, clinical_format: str | None = None, mapping: str | Path | None = None,
                boxes: str | Path | None = None, masks: str | Path | None = None, site: str | None = None,
                workers: int = 1, progress: bool = True, options: PipelineOptions = PipelineOptions()
                ) -> PrepareResult:
    """Build (or update) the site cache ``out`` from a DICOM tree and a clinical table.

    Tumour annotations: ``boxes`` (Duke xlsx or CSV), ``masks`` (folder of NIfTI masks named by patient)
    and DICOM-SEG objects in the tree; without any, ``cfg.localisation`` decides (automatic by default).
    """
    t_start = time.perf_counter()
    dicom, out = _check_paths(dicom, out, cfg, boxes, masks)
    prep_hash = cfg.hash()
    table, issues = _load_clinical(Path(clinical) if clinical else None, clinical_format,
                                   Path(mapping) if mapping else None, site)
    out.mkdir(parents=True, exist_ok=True)
    prev_man, prev_kin = _previous(out, prep_hash)

    t_scan = time.perf_counter()
    files, unreadable = walk_files(dicom)
    heads, ignored, n_bytes = _scan(files, workers, progress)
    scan_s = time.perf_counter() - t_scan
    annotations, ann_issues, ignored = gather(boxes, masks, ignored)
    issues += ann_issues
    sources = ", ".join(str(x) for x in (boxes, masks) if x is not None) or "(no --boxes/--masks)"
    plan = plan_jobs(group_patients(heads), table, issues, annotations, ignored + [
        {"file": u["folder"], "reason": f"unreadable folder: {u['reason']}", "folder": "1"} for u in unreadable],
                     set(prev_man["patient_id"].astype(str)), cfg,
                     clinical_src=f"{clinical}" if clinical else "(no --clinical table)",
                     boxes_src=sources + " or a DICOM-SEG in the tree",
                     site=site, default_site=dicom.name, out=str(out),
                     skip_on_clinical_issue=options.skip_on_clinical_issue, keep_unlabelled=options.keep_unlabelled)
    results: list[dict[str, Any]] = map_with_progress(_job, plan.jobs, workers=workers, desc="prepare patients",
                                                      unit="pt", progress=progress, on_crash=_job_crashed)
    manifest, kin = _merge(results, plan, prev_man, prev_kin)
    ids = manifest["patient_id"].astype(str).tolist()
    _remove_stale(out, _cached_volumes(manifest))
    res = PrepareResult(processed=ids, reused=sorted(set(plan.reused) & set(ids)), skipped=plan.skipped,
                        ignored_files=ignored, clinical_issues=issues, prep_hash=prep_hash, n_files=len(files),
                        n_bytes=n_bytes, unreadable=unreadable, scan_seconds=scan_s,
                        seconds=time.perf_counter() - t_start,
                        extra={"missing_visits": _missing_visits(manifest, cfg, results)}
                        if len(cfg.visits) > 1 else {})
    write_cache_tables(out, manifest, _clinical_rows(manifest, plan, table), kin,
                       {"config": to_dict(cfg), "hash": prep_hash}, _report(res, dicom, options))
    return res


def _check_paths(dicom: str | Path, out: str | Path, cfg: PrepConfig, boxes: str | Path | None,
                 masks: str | Path | None) -> tuple[Path, Path]:
    """Validate the config and the source / output paths (the source is read-only); resolved paths."""
    validate_config(cfg)
    dicom, out = Path(dicom).resolve(), Path(out).resolve()
    if not dicom.is_dir():
        raise ValueError(f"--dicom {dicom}: not a directory")
    if out == dicom or dicom in out.parents:
        raise ValueError(f"--out {out} lies inside the DICOM tree {dicom}; the source is read-only")
    if masks is not None and not Path(masks).is_dir():
        raise ValueError(f"--masks {masks}: not a folder of NIfTI masks")
    return dicom, out


def _merge(results: list[dict[str, Any]], plan: Plan, prev_man: pd.DataFrame, prev_kin: pd.DataFrame
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """New manifest and kinetics rows plus the reused previous ones (sorted by patient); failures join
    ``plan.skipped``."""
    rows, krows = [], []
    for r in results:
        if "error" in r:
            plan.skipped.append({"patient": r["patient"], "reason": r["error"]})
        else:
            rows.append(r["row"])
            krows.append(r["kinetics"])
    new_ids = {r["patient_id"] for r in rows}
    failed = {s["patient"] for s in plan.skipped}
    keep_prev = prev_man[prev_man["patient_id"].isin(set(plan.reused)) & ~prev_man["patient_id"].isin(new_ids | failed)]
    manifest = pd.concat([keep_prev, pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))], ignore_index=True)
    manifest = manifest.sort_values("patient_id").reset_index(drop=True)
    kin = pd.concat([prev_kin[prev_kin["patient_id"].isin(set(keep_prev["patient_id"]))],
                     pd.DataFrame(krows, columns=list(KINETICS_COLUMNS))], ignore_index=True)
    return manifest, kin.sort_values("patient_id").reset_index(drop=True)


def _cached_volumes(manifest: pd.DataFrame) -> set[str]:
    """Every volume file the manifest names (baseline and later visits)."""
    keep = set(manifest["volume"].astype(str))
    for visit in LATER_VISITS:
        col = visit_columns(visit)[0]
        if col in manifest.columns:
            keep |= {v for v in manifest[col].astype(str) if v not in ("", "nan")}
    return keep


def _missing_visits(manifest: pd.DataFrame, cfg: PrepConfig, results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Cached patients without a requested later visit, with the reason (this run's, or 'reused' for patients
    kept from an earlier run): the report's ``missing_visits``."""
    reasons = {(n["patient"], n["visit"]): n["reason"] for r in results for n in r.get("visit_notes", [])}
    out = []
    for visit in cfg.visits[1:]:
        col = visit_columns(visit)[0]
        for pid, rel in zip(manifest["patient_id"].astype(str), manifest[col].astype(str)):
            if rel in ("", "nan"):
                out.append({"patient": pid, "visit": visit,
                            "reason": reasons.get((pid, visit), "no usable visit when this patient was prepared "
                                                                "(reused from an earlier run)")})
    return out


def _clinical_rows(manifest: pd.DataFrame, plan: Plan, table: pd.DataFrame) -> pd.DataFrame:
    """The cached patients' clinical rows, ``patient_id`` in the DICOM spelling and ``site`` as prepared."""
    ids = manifest["patient_id"].astype(str).tolist()
    clin = pd.DataFrame([plan.clinical[id_key(p)].to_dict() for p in ids], columns=list(table.columns))
    if len(ids):
        clin["patient_id"] = ids  # the DICOM spelling, the key every cache file shares
        clin["site"] = manifest["site"].astype(str).tolist()  # the site this cache was prepared for
    return clin


def _report(res: PrepareResult, dicom: Path, options: PipelineOptions) -> dict[str, Any]:
    """The cache's ``report.json`` content."""
    return {"processed": res.processed, "skipped": res.skipped, "prep_hash": res.prep_hash, "reused": res.reused,
            "ignored_files": [{"file": os.path.relpath(d["file"], dicom), "reason": d["reason"]}
                              for d in res.ignored_files],
            "clinical_issues": [{k: str(v) for k, v in i.items()} for i in res.clinical_issues],
            "unreadable_folders": [{"folder": os.path.relpath(u["folder"], dicom), "reason": u["reason"]}
                                   for u in res.unreadable],
            "n_files": res.n_files, "n_bytes": res.n_bytes, "seconds": round(res.seconds, 2),
            "unlabelled_policy": "kept" if options.keep_unlabelled else "skipped", **res.extra}


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete cached volumes of patients no longer in the manifest (files this pipeline wrote)."""
    vdir = out / VOLUMES
    if not vdir.is_dir():
        return
    for f in vdir.iterdir():
        if f.suffix == ".npy" and f"{VOLUMES}/{f.name}" not in keep:
            f.unlink()


__all__ = ["KINETICS_COLUMNS", "MANIFEST_COLUMNS", "PipelineOptions", "PrepareResult", "process_patient",
           "run_prepare", "validate_config", "volume_path"]
