"""One patient through the preprocessing: select the series, read and harmonise the phases, compute the
kinetic features, resample onto the output grid, write the volume; returns the manifest and kinetics rows.

Raises DicomError / ValueError with a message naming the file, series or field at fault; the caller
(``common.preprocess.pipeline``) turns that into a skipped patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.config import PrepConfig
from common.preprocess.annotations import Annotation
from common.preprocess.boxes import Box
from common.preprocess.dicom_headers import DicomError, SliceHeader
from common.preprocess.dicom_phases import Selection, phase_seconds, select_series
from common.preprocess.intensity import body_mask, fit_standardiser
from common.preprocess.kinetics import KINETIC_COLUMNS, kinetic_features
from common.preprocess.localise import annotation_box, locate
from common.preprocess.volume import box_centre, from_array, mask_centre, n4_field, onto, output_grid, \
    phase_image, same_grid, to_array
from common.site_cache import visit_columns, write_volume


@dataclass
class _Native:
    """The patient's DCE phases on the pre-contrast grid, before harmonisation."""

    sel: Selection
    names: list[str]
    pre: Any  # SimpleITK image of the pre-contrast phase (geometry reference)
    arrays: list[np.ndarray]


def process_patient(pid: str, heads: list[SliceHeader], cfg: PrepConfig, box: Annotation | Box | None, out: str,
                    site: str, label: float | None) -> dict[str, Any]:
    """Select, read, harmonise and cache one patient; returns ``{"row": manifest row, "kinetics": row}``.

    ``box``: the patient's tumour annotation (an ``Annotation``, or a bare Duke voxel box), or None.
    Raises DicomError / ValueError with a message naming the file, series or field at fault.
    """
    ann = Annotation("box", "(given)", box=tuple(box)) if isinstance(box, (tuple, list)) else box  # type: ignore
    nat = _read_native(pid, heads, cfg)
    mask_img = body_mask(nat.pre)
    mask = to_array(mask_img) > 0
    tbox, source = _tumour_box(pid, nat, cfg, ann, mask)
    times = phase_seconds(nat.sel.phases)
    krow = _kinetics_row(pid, nat, times, tbox, mask, "auto_box" if source.startswith("auto") else "tumour_box")
    arrays, pad = _harmonise(nat, cfg, mask_img, mask)
    centre = box_centre(nat.pre, tbox) if cfg.crop == "tumour" and tbox is not None else mask_centre(mask_img)
    grid = output_grid(nat.pre, centre, cfg.orientation, cfg.spacing_mm, cfg.shape)
    vol, t2_present = _channels(nat, arrays, pad, cfg, grid)
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"patient {pid}: non-finite values after preprocessing (float16 overflow?)")
    rel = write_volume(out, pid, vol)
    row = _manifest_row(pid, nat, cfg, site, label, rel, times, centre, t2_present)
    row.update(tumour_box=";".join(str(b) for b in tbox) if tbox is not None else "", box_source=source)
    notes = []
    for visit in cfg.visits[1:]:
        cols, note = _later_visit(pid, heads, cfg, visit, centre if cfg.crop == "tumour" else None,
                                  nat.sel.study.date, out)
        row.update(cols)
        if note:
            notes.append({"patient": pid, "visit": visit, "reason": note})
    return {"row": row, "kinetics": krow, "visit_notes": notes}


def _days_between(first: str | None, later: str | None) -> str:
    """Whole days between two DICOM dates (YYYYMMDD); empty when either is missing or malformed."""
    from datetime import datetime

    try:
        return str((datetime.strptime(str(later), "%Y%m%d") - datetime.strptime(str(first), "%Y%m%d")).days)
    except (TypeError, ValueError):
        return ""


def _later_visit(pid: str, heads: list[SliceHeader], cfg: PrepConfig, visit: str, centre: Any,
                 base_date: str | None, out: str) -> tuple[dict[str, str], str]:
    """Cache one later visit (same harmonisation; crop centred on the baseline tumour centre ``centre``, or on
    its own body mask for crop='breast'). Returns its manifest columns and, when the visit is missing or
    unusable, empty columns and the reason (the patient is kept)."""
    vol_col, date_col, days_col = visit_columns(visit)
    try:
        nat = _read_native(pid, heads, cfg, visit)
        mask_img = body_mask(nat.pre)
        arrays, pad = _harmonise(nat, cfg, mask_img, to_array(mask_img) > 0)
        grid = output_grid(nat.pre, centre if centre is not None else mask_centre(mask_img), cfg.orientation,
                           cfg.spacing_mm, cfg.shape)
        vol, _ = _channels(nat, arrays, pad, cfg, grid)
        if not np.all(np.isfinite(vol)):
            raise ValueError(f"patient {pid}: non-finite values in the {visit} visit after preprocessing")
    except (DicomError, ValueError) as exc:
        return {vol_col: "", date_col: "", days_col: ""}, str(exc)
    rel = write_volume(out, pid, vol, visit)
    date = nat.sel.study.date or ""
    return {vol_col: rel, date_col: date, days_col: _days_between(base_date, date)}, ""


def _tumour_box(pid: str, nat: _Native, cfg: PrepConfig, ann: Annotation | None, mask: np.ndarray
                ) -> tuple[Box | None, str]:
    """The tumour box in the pre-contrast grid and where it came from (annotation file or automatic);
    with crop='breast' only an annotation is used (for the kinetics region)."""
    if cfg.crop == "tumour":
        box, source = locate(pid, cfg.localisation, ann, nat.pre, nat.arrays, mask)
    elif ann is not None:
        box, source = annotation_box(pid, ann, nat.pre), f"{ann.kind}:{ann.source}"
    else:
        return None, ""
    size_zyx = nat.arrays[0].shape
    z0, z1, y0, y1, x0, x1 = box
    if z1 >= size_zyx[0] or y1 >= size_zyx[1] or x1 >= size_zyx[2]:
        raise ValueError(f"patient {pid}: tumour box (z{z0}-{z1}, y{y0}-{y1}, x{x0}-{x1}, 0-based) lies outside "
                         f"the pre-contrast series {nat.sel.phases[0].series_uid} of {size_zyx[0]}x{size_zyx[1]}x"
                         f"{size_zyx[2]} voxels")
    return box, source


def _read_native(pid: str, heads: list[SliceHeader], cfg: PrepConfig, visit: str | None = None) -> _Native:
    """Select the series (of ``visit``, default ``cfg.visit``), check the channels, read every phase onto the
    pre-contrast grid."""
    sel = select_series(pid, heads, visit or cfg.visit)
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
    return _Native(sel=sel, names=names, pre=pre, arrays=[to_array(im) for im in imgs])


def _kinetics_row(pid: str, nat: _Native, times: list[float], box: Box | None, mask: np.ndarray,
                  box_name: str) -> dict[str, Any]:
    """Kinetic features from the native phases (the bias field cancels in percent enhancement)."""
    if box is not None:
        region = np.zeros(nat.arrays[0].shape, bool)
        region[box[0]:box[1] + 1, box[2]:box[3] + 1, box[4]:box[5] + 1] = True
        region_name = box_name
    else:
        region, region_name = mask, "body_mask"
    kin = kinetic_features(nat.arrays, times, region)
    return {"patient_id": pid, **{k: kin[k] for k in KINETIC_COLUMNS}, "n_phases": len(nat.names),
            "kinetic_region": region_name}


def _harmonise(nat: _Native, cfg: PrepConfig, mask_img: Any, mask: np.ndarray) -> tuple[list[np.ndarray], float]:
    """N4 bias correction and body z-score standardisation (as configured); returns arrays and pad value."""
    arrays = nat.arrays
    if cfg.n4:
        bias = to_array(n4_field(nat.pre, mask_img))
        arrays = [a / np.maximum(bias, 1e-3) for a in arrays]
    if cfg.standardise == "zscore_body":
        std = fit_standardiser(arrays[0], mask, tuple(cfg.clip_percentiles))  # type: ignore[arg-type]
        return [std.apply(a) for a in arrays], std.value(0.0)
    return arrays, 0.0


def _channels(nat: _Native, arrays: list[np.ndarray], pad: float, cfg: PrepConfig, grid: Any
              ) -> tuple[np.ndarray, int]:
    """The configured channels on the output grid as one float16 ``(C, Z, Y, X)`` array; T2 present flag."""
    cache: dict[str, np.ndarray] = {}

    def phase_out(name: str) -> np.ndarray:
        if name not in cache:
            k = nat.names.index(name)
            cache[name] = to_array(onto(from_array(arrays[k], nat.pre), grid, cfg.interpolator, pad))
        return cache[name]

    t2_present = 0
    chans = []
    for ch in cfg.channels:
        if ch.startswith("sub"):
            chans.append(phase_out(f"post{int(ch[3:])}") - phase_out("pre"))
        elif ch == "t2":
            if nat.sel.t2 is None:
                chans.append(np.zeros(tuple(cfg.shape), np.float32))
            else:
                chans.append(_t2_channel(nat.sel, cfg, grid))
                t2_present = 1
        else:
            chans.append(phase_out(ch))
    return np.stack(chans).astype(np.float16), t2_present


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


def _view(h: SliceHeader) -> str:
    n = np.abs(np.cross(h.iop[:3], h.iop[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def _manifest_row(pid: str, nat: _Native, cfg: PrepConfig, site: str, label: float | None, rel: str,
                  times: list[float], centre: Any, t2_present: int) -> dict[str, Any]:
    """The patient's manifest row (columns ``common.site_cache.MANIFEST_COLUMNS``)."""
    h = nat.sel.first
    return {
        "patient_id": pid, "site": site, "label": "" if label is None else int(label),
        "phases": ";".join(nat.names), "channels": ";".join(cfg.channels),
        "shape": "x".join(str(s) for s in cfg.shape), "spacing": "x".join([f"{cfg.spacing_mm:g}"] * 3),
        "volume": rel, "prep_hash": cfg.hash(), "manufacturer": h.manufacturer, "model": h.model,
        "field_strength": h.field_strength, "pixel_spacing": h.pixel_spacing[0],
        "slice_thickness": h.slice_thickness, "repetition_time": h.tr, "echo_time": h.te, "view": _view(h),
        "t2_present": t2_present, "n_phases": len(nat.names), "phase_times": ";".join(f"{t:.1f}" for t in times),
        "crop_centre": ";".join(f"{c:.2f}" for c in centre), "series_choice": " | ".join(nat.sel.choice),
        "study_date": nat.sel.study.date, "study_uid": nat.sel.study.uid,
        "dce_series": ";".join(dict.fromkeys(p.series_uid for p in nat.sel.phases)),
        "t2_series": nat.sel.t2.series_uid if nat.sel.t2 is not None else "",
    }


__all__ = ["process_patient"]
