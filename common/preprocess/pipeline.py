"""``fedpcr prepare``: DICOM tree + clinical table -> harmonised site cache (docs/CONTRACTS.md §2).

Each patient runs alone (error isolation: a failure skips that patient with a precise reason and the
rest goes on), optionally in parallel processes. The source tree is only read. Re-running is
incremental: patients already in the cache with the same ``PrepConfig.hash()`` are kept as they are.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from common.config import PHASE_NAMES, PrepConfig, to_dict
from common.parallel import map_with_progress
from common.preprocess.boxes import Box, read_boxes
from common.preprocess.dicom import DicomError, Selection, SliceHeader, group_patients, list_files, scan_files, \
    select_series
from common.preprocess.intensity import body_mask, fit_standardiser
from common.preprocess.kinetics import KINETIC_COLUMNS, kinetic_features
from common.preprocess.volume import box_centre, from_array, mask_centre, n4_field, onto, output_grid, \
    phase_image, same_grid, to_array

MANIFEST_COLUMNS = (
    "patient_id", "site", "label", "phases", "channels", "shape", "spacing", "volume", "prep_hash",
    "manufacturer", "model", "field_strength", "pixel_spacing", "slice_thickness", "repetition_time",
    "echo_time", "view", "t2_present", "n_phases", "phase_times", "crop_centre", "series_choice",
)
KINETICS_COLUMNS = ("patient_id", *KINETIC_COLUMNS, "n_phases", "kinetic_region")


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
    """What one ``prepare`` run did (also written to CACHE/report.json)."""

    processed: list[str]
    reused: list[str]
    skipped: list[dict[str, str]]
    ignored_files: list[dict[str, str]]
    clinical_issues: list[dict[str, Any]]
    prep_hash: str
    n_files: int = 0
    n_bytes: int = 0
    seconds: float = 0.0
    scan_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"prepare: {len(self.processed)} patients in cache ({len(self.processed) - len(self.reused)} "
                 f"processed now, {len(self.reused)} reused), {len(self.skipped)} skipped, "
                 f"{len(self.ignored_files)} files ignored; {self.n_files} files / {self.n_bytes / 1e6:.1f} MB "
                 f"scanned in {self.scan_seconds:.1f}s; total {self.seconds:.1f}s; prep_hash {self.prep_hash}"]
        for s in self.skipped[:20]:
            lines.append(f"  skipped {s['patient']}: {s['reason']}")
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more in report.json")
        return "\n".join(lines)


def safe_id(pid: str) -> str:
    """File-name-safe patient id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", pid) or "_"


def _id_key(pid: str) -> str:
    from common.preprocess.boxes import _id_key as key

    return key(pid)


def validate_config(cfg: PrepConfig) -> None:
    """Reject configs the pipeline cannot honour, naming the field."""
    if cfg.crop not in {"tumour", "breast"}:
        raise ValueError(f"PrepConfig.crop must be 'tumour' or 'breast', got {cfg.crop!r}")
    if cfg.standardise not in {"zscore_body", "none"}:
        raise ValueError(f"PrepConfig.standardise must be 'zscore_body' or 'none', got {cfg.standardise!r}")
    if cfg.interpolator not in {"linear", "bspline"}:
        raise ValueError(f"PrepConfig.interpolator must be 'linear' or 'bspline', got {cfg.interpolator!r}")
    if len(cfg.shape) != 3 or min(cfg.shape) < 1 or cfg.spacing_mm <= 0:
        raise ValueError(f"PrepConfig.shape/spacing_mm invalid: {cfg.shape}, {cfg.spacing_mm}")
    for ch in cfg.channels:
        if ch not in PHASE_NAMES and ch != "t2" and not re.fullmatch(r"sub\d+", ch):
            raise ValueError(f"PrepConfig.channels: unknown channel {ch!r} (pre, postK, subK, t2)")


def _view(h: SliceHeader) -> str:
    n = np.abs(np.cross(h.iop[:3], h.iop[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def _phase_seconds(sel: Selection) -> list[float]:
    def t(p: Any) -> float | None:
        if p.acq_time is not None:
            return float(p.acq_time)
        return p.trigger_time / 1000.0 if p.trigger_time is not None else None

    raw = [t(p) for p in sel.phases]
    if any(r is None for r in raw):
        return [float(k) for k in range(len(raw))]
    t0 = raw[0]
    return [float(r - t0) if r >= t0 else float(r - t0 + 86400) for r in raw]  # type: ignore[operator]


def process_patient(pid: str, heads: list[SliceHeader], cfg: PrepConfig, box: Box | None, out: str,
                    site: str, label: float | None) -> dict[str, Any]:
    """Select, read, harmonise and cache one patient; returns manifest + kinetics rows.

    Raises DicomError / ValueError with a message naming the file, series or field at fault.
    """
    sel = select_series(pid, heads, cfg.visit)
    names = [p.name for p in sel.phases]
    n_post = len(names) - 1
    for ch in cfg.channels:
        k = int(ch[4:]) if ch.startswith("post") else int(ch[3:]) if ch.startswith("sub") else 0
        if k > n_post:
            raise DicomError(f"patient {pid}: channel {ch!r} needs post-contrast phase {k}, but the DCE has "
                             f"{n_post} ({';'.join(names)})")
    imgs = [phase_image(p) for p in sel.phases]
    pre = imgs[0]
    for k in range(1, len(imgs)):
        if not same_grid(imgs[k], pre):
            imgs[k] = onto(imgs[k], pre, "linear", 0.0)
            sel.choice.append(f"{names[k]} resampled onto the pre-contrast grid (different geometry)")
    arrays = [to_array(im) for im in imgs]
    size_zyx = arrays[0].shape
    if box is not None:
        z0, z1, y0, y1, x0, x1 = box
        if z1 >= size_zyx[0] or y1 >= size_zyx[1] or x1 >= size_zyx[2]:
            raise ValueError(f"patient {pid}: tumour box (z{z0}-{z1}, y{y0}-{y1}, x{x0}-{x1}, 0-based) lies outside "
                             f"the pre-contrast series {sel.phases[0].series_uid} of {size_zyx[0]}x{size_zyx[1]}x"
                             f"{size_zyx[2]} voxels")
    mask_img = body_mask(pre)
    mask = to_array(mask_img) > 0
    times = _phase_seconds(sel)
    # kinetic features from the native phases (bias field cancels in percent enhancement)
    if box is not None:
        region = np.zeros(size_zyx, bool)
        region[box[0]:box[1] + 1, box[2]:box[3] + 1, box[4]:box[5] + 1] = True
        region_name = "tumour_box"
    else:
        region, region_name = mask, "body_mask"
    kin = kinetic_features(arrays, times, region)
    if cfg.n4:
        bias = to_array(n4_field(pre, mask_img))
        arrays = [a / np.maximum(bias, 1e-3) for a in arrays]
    if cfg.standardise == "zscore_body":
        std = fit_standardiser(arrays[0], mask, tuple(cfg.clip_percentiles))  # type: ignore[arg-type]
        arrays = [std.apply(a) for a in arrays]
        pad = std.value(0.0)
    else:
        pad = 0.0
    if cfg.crop == "tumour":
        if box is None:
            raise ValueError(f"patient {pid}: crop='tumour' but no tumour box for this patient")
        centre = box_centre(pre, box)
    else:
        centre = mask_centre(mask_img)
    grid = output_grid(pre, centre, cfg.orientation, cfg.spacing_mm, cfg.shape)
    cache: dict[str, np.ndarray] = {}

    def phase_out(name: str) -> np.ndarray:
        if name not in cache:
            k = names.index(name)
            cache[name] = to_array(onto(from_array(arrays[k], pre), grid, cfg.interpolator, pad))
        return cache[name]

    t2_present = 0
    chans = []
    for ch in cfg.channels:
        if ch.startswith("sub"):
            chans.append(phase_out(f"post{int(ch[3:])}") - phase_out("pre"))
        elif ch == "t2":
            if sel.t2 is None:
                chans.append(np.zeros(tuple(cfg.shape), np.float32))
            else:
                chans.append(_t2_channel(sel, cfg, grid))
                t2_present = 1
        else:
            chans.append(phase_out(ch))
    vol = np.stack(chans).astype(np.float16)
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"patient {pid}: non-finite values after preprocessing (float16 overflow?)")
    vdir = Path(out) / "volumes"
    vdir.mkdir(parents=True, exist_ok=True)
    rel = f"volumes/{safe_id(pid)}.npy"
    tmp = Path(out) / f"{rel}.tmp.npy"
    np.save(tmp, vol)
    os.replace(tmp, Path(out) / rel)
    h = sel.first
    row = {
        "patient_id": pid, "site": site, "label": "" if label is None else int(label),
        "phases": ";".join(names), "channels": ";".join(cfg.channels),
        "shape": "x".join(str(s) for s in cfg.shape), "spacing": "x".join([f"{cfg.spacing_mm:g}"] * 3),
        "volume": rel, "prep_hash": cfg.hash(), "manufacturer": h.manufacturer, "model": h.model,
        "field_strength": h.field_strength, "pixel_spacing": h.pixel_spacing[0],
        "slice_thickness": h.slice_thickness, "repetition_time": h.tr, "echo_time": h.te, "view": _view(h),
        "t2_present": t2_present, "n_phases": len(names), "phase_times": ";".join(f"{t:.1f}" for t in times),
        "crop_centre": ";".join(f"{c:.2f}" for c in centre), "series_choice": " | ".join(sel.choice),
    }
    krow = {"patient_id": pid, **{k: kin[k] for k in KINETIC_COLUMNS}, "n_phases": len(names),
            "kinetic_region": region_name}
    return {"row": row, "kinetics": krow}


def _t2_channel(sel: Selection, cfg: PrepConfig, grid: Any) -> np.ndarray:
    """T2 resampled onto the output grid, standardised with its own body mask and statistics."""
    assert sel.t2 is not None
    img = phase_image(sel.t2)
    arr = to_array(img)
    pad = 0.0
    if cfg.standardise == "zscore_body":
        mask = to_array(body_mask(img)) > 0
        std = fit_standardiser(arr, mask, tuple(cfg.clip_percentiles))  # type: ignore[arg-type]
        arr, pad = std.apply(arr), std.value(0.0)
    return to_array(onto(from_array(arr, img), grid, cfg.interpolator, pad))


def _job(args: tuple) -> dict[str, Any]:
    pid = args[0]
    try:
        return process_patient(*args)
    except (DicomError, ValueError) as exc:
        return {"error": str(exc), "patient": pid}
    except Exception as exc:  # error isolation: one patient never stops the site
        return {"error": f"patient {pid}: unexpected {type(exc).__name__}: {exc}", "patient": pid}


def _scan(files: list[str], workers: int, progress: bool) -> tuple[list[SliceHeader], list[dict[str, str]], int]:
    heads: list[SliceHeader] = []
    ignored: list[dict[str, str]] = []
    n_bytes = 0
    bar = tqdm(total=len(files), desc="scan DICOM headers", unit="file", disable=not progress)
    if workers > 1 and len(files) > 200:
        n_chunks = workers * 8
        chunks = [files[i::n_chunks] for i in range(n_chunks)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, (h, ig, nb) in zip(chunks, pool.map(scan_files, chunks)):
                heads += h
                ignored += ig
                n_bytes += nb
                bar.update(len(chunk))
    else:
        step = 500
        for i in range(0, len(files), step):
            h, ig, nb = scan_files(files[i:i + step])
            heads += h
            ignored += ig
            n_bytes += nb
            bar.update(len(files[i:i + step]))
    bar.close()
    ignored.sort(key=lambda d: d["file"])
    return heads, ignored, n_bytes


def _load_clinical(path: Path | None, fmt: str | None, mapping: Path | None, site: str | None
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    if path is None:
        from common.schema import empty_canonical

        return empty_canonical(), []
    from common.preprocess.clinical import load_clinical  # H3's module (docs/CONTRACTS.md §2b)

    ct = load_clinical(path, fmt=fmt, mapping=mapping, site=site)
    return ct.table.copy(), list(ct.issues)


def _previous(out: Path, prep_hash: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and kinetics rows of the existing cache that are still valid for ``prep_hash``."""
    man_path, kin_path, cfg_path = out / "manifest.csv", out / "kinetics.csv", out / "prep_config.json"
    empty = pd.DataFrame(columns=list(MANIFEST_COLUMNS)), pd.DataFrame(columns=list(KINETICS_COLUMNS))
    if not (man_path.exists() and cfg_path.exists()):
        return empty
    try:
        old_hash = json.loads(cfg_path.read_text())["hash"]
        man = pd.read_csv(man_path, dtype={"patient_id": str, "label": str}, keep_default_na=False)
        kin = pd.read_csv(kin_path, dtype={"patient_id": str}) if kin_path.exists() else empty[1]
    except Exception:
        return empty
    if old_hash != prep_hash:
        return empty
    ok = (man["prep_hash"].astype(str) == prep_hash) & man["volume"].map(lambda v: (out / str(v)).exists())
    man = man[ok]
    kin = kin[kin["patient_id"].isin(set(man["patient_id"]))]
    return man, kin


def run_prepare(dicom: str | Path, clinical: str | Path | None, out: str | Path, cfg: PrepConfig = PrepConfig(),
                *, clinical_format: str | None = None, mapping: str | Path | None = None,
                boxes: str | Path | None = None, site: str | None = None, workers: int = 1,
                progress: bool = True, options: PipelineOptions = PipelineOptions()) -> PrepareResult:
    """Build (or update) the site cache ``out`` from a DICOM tree and a clinical table."""
    t_start = time.perf_counter()
    validate_config(cfg)
    dicom, out = Path(dicom).resolve(), Path(out).resolve()
    if not dicom.is_dir():
        raise ValueError(f"--dicom {dicom}: not a directory")
    if out == dicom or dicom in out.parents:
        raise ValueError(f"--out {out} lies inside the DICOM tree {dicom}; the source is read-only")
    if cfg.crop == "tumour" and boxes is None:
        raise ValueError("crop='tumour' needs tumour boxes: pass --boxes Annotation_Boxes.xlsx (or use crop: breast)")
    prep_hash = cfg.hash()
    table, issues = _load_clinical(Path(clinical) if clinical else None, clinical_format,
                                   Path(mapping) if mapping else None, site)
    box_map: dict[str, Box] = {}
    if boxes is not None:
        box_map, box_issues = read_boxes(boxes)
        issues += box_issues
    out.mkdir(parents=True, exist_ok=True)
    prev_man, prev_kin = _previous(out, prep_hash)

    t_scan = time.perf_counter()
    files = list_files(dicom)
    heads, ignored, n_bytes = _scan(files, workers, progress)
    scan_s = time.perf_counter() - t_scan
    patients = group_patients(heads)

    clin_by_key: dict[str, pd.Series] = {}
    dup_keys: set[str] = set()
    for _, r in table.iterrows():
        k = _id_key(str(r["patient_id"]))
        if k in clin_by_key:
            dup_keys.add(k)
        clin_by_key[k] = r
    issues_by_key: dict[str, list[dict[str, Any]]] = {}
    for it in issues:
        if str(it.get("patient", "") or ""):
            issues_by_key.setdefault(_id_key(str(it["patient"])), []).append(it)

    # unreadable DICOM files (not stray non-DICOM files) in a folder that holds only one patient's images
    # make that patient's series incomplete: the patient is skipped, naming the file
    bad_by_dir: dict[str, list[str]] = {}
    for d in ignored:
        if d["reason"].startswith(("unreadable DICOM", "malformed header", "incomplete MR header")):
            bad_by_dir.setdefault(os.path.dirname(d["file"]), []).append(d["file"])
    dir_patients: dict[str, set[str]] = {}
    for pid, hs in patients.items():
        for h in hs:
            dir_patients.setdefault(os.path.dirname(h.path), set()).add(pid)

    skipped: list[dict[str, str]] = []
    reused: list[str] = []
    jobs = []
    done = set(prev_man["patient_id"].astype(str))
    for pid in sorted(patients):
        key = _id_key(pid)
        src = f"{clinical}" if clinical else "(no --clinical table)"
        row = clin_by_key.get(key)
        if row is None:
            skipped.append({"patient": pid, "reason": f"no clinical row in {src} for PatientID {pid} (key {key})"})
            continue
        if key in dup_keys:
            skipped.append({"patient": pid, "reason": f"several clinical rows in {src} match PatientID {pid}"})
            continue
        pat_issues = [i for i in issues_by_key.get(key, []) if i.get("field") != "Annotation_Boxes"]
        if pat_issues and options.skip_on_clinical_issue:
            text = "; ".join(f"field {i.get('field')}={i.get('value')!r}: {i.get('reason')}" for i in pat_issues)
            skipped.append({"patient": pid, "reason": f"clinical issue in {src}: {text}"})
            continue
        label = pd.to_numeric(pd.Series([row.get("pcr")]), errors="coerce").iloc[0]
        if pd.isna(label) and not options.keep_unlabelled:
            skipped.append({"patient": pid, "reason": f"no pCR label (pcr empty) in {src} for {pid}"})
            continue
        box = box_map.get(key)
        if box is None and cfg.crop == "tumour":
            bi = [i["reason"] for i in issues_by_key.get(key, []) if i.get("field") == "Annotation_Boxes"]
            why = f" ({bi[0]})" if bi else ""
            skipped.append({"patient": pid, "reason": f"no tumour box for {pid} in {boxes}{why} (crop='tumour')"})
            continue
        hs = patients[pid]
        bad = sorted({f for dr in {os.path.dirname(h.path) for h in hs} if dir_patients.get(dr) == {pid}
                      for f in bad_by_dir.get(dr, [])})
        if bad:
            why = next(d["reason"] for d in ignored if d["file"] == bad[0])
            skipped.append({"patient": pid, "reason": f"unreadable DICOM file {bad[0]} ({why}) among the series files "
                                                      f"of {pid}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")})
            continue
        if pid in done:
            reused.append(pid)
            continue
        site_name = site or next((h.trial_site for h in hs if h.trial_site), "") or str(row.get("site") or "") \
            or dicom.name
        jobs.append((pid, hs, cfg, box, str(out), site_name, None if pd.isna(label) else float(label)))

    results: list[dict[str, Any]] = map_with_progress(_job, jobs, workers=workers, desc="prepare patients", unit="pt",
                                                      progress=progress)

    rows, krows = [], []
    for r in results:
        if "error" in r:
            skipped.append({"patient": r["patient"], "reason": r["error"]})
        else:
            rows.append(r["row"])
            krows.append(r["kinetics"])
    new_ids = {r["patient_id"] for r in rows}
    failed = {s["patient"] for s in skipped}
    keep_prev = prev_man[prev_man["patient_id"].isin(set(reused)) & ~prev_man["patient_id"].isin(new_ids | failed)]
    manifest = pd.concat([keep_prev, pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))], ignore_index=True)
    manifest = manifest.sort_values("patient_id").reset_index(drop=True)
    kin = pd.concat([prev_kin[prev_kin["patient_id"].isin(set(keep_prev["patient_id"]))],
                     pd.DataFrame(krows, columns=list(KINETICS_COLUMNS))], ignore_index=True)
    kin = kin.sort_values("patient_id").reset_index(drop=True)
    ids = manifest["patient_id"].astype(str).tolist()
    _remove_stale(out, set(manifest["volume"].astype(str)))
    clin_rows = [clin_by_key[_id_key(p)].to_dict() for p in ids]
    clin = pd.DataFrame(clin_rows, columns=list(table.columns))
    if len(ids):
        clin["patient_id"] = ids  # the DICOM spelling, the key every cache file shares
        clin["site"] = manifest["site"].astype(str).tolist()  # the site this cache was prepared for
    _write_csv(manifest, out / "manifest.csv")
    _write_csv(clin, out / "clinical.csv")
    _write_csv(kin, out / "kinetics.csv")
    (out / "prep_config.json").write_text(json.dumps({"config": to_dict(cfg), "hash": prep_hash}, indent=1) + "\n")
    res = PrepareResult(processed=ids, reused=sorted(set(reused) & set(ids)), skipped=skipped, ignored_files=ignored,
                        clinical_issues=issues, prep_hash=prep_hash, n_files=len(files), n_bytes=n_bytes,
                        scan_seconds=scan_s, seconds=time.perf_counter() - t_start)
    report = {"processed": res.processed, "skipped": res.skipped, "prep_hash": prep_hash, "reused": res.reused,
              "ignored_files": [{"file": os.path.relpath(d["file"], dicom), "reason": d["reason"]} for d in ignored],
              "clinical_issues": [{k: str(v) for k, v in i.items()} for i in issues],
              "n_files": res.n_files, "n_bytes": res.n_bytes, "seconds": round(res.seconds, 2),
              "unlabelled_policy": "kept" if options.keep_unlabelled else "skipped"}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return res


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete cached volumes of patients no longer in the manifest (files this pipeline wrote)."""
    vdir = out / "volumes"
    if not vdir.is_dir():
        return
    for f in vdir.iterdir():
        if f.suffix == ".npy" and f"volumes/{f.name}" not in keep:
            f.unlink()


__all__ = ["KINETICS_COLUMNS", "MANIFEST_COLUMNS", "PipelineOptions", "PrepareResult", "process_patient",
           "run_prepare", "safe_id", "validate_config"]
