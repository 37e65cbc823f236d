"""Enhanced MR Image Storage (multi-frame; current Philips and Siemens exports): one :class:`SliceHeader`
per frame, geometry and timing taken from the per-frame functional group, else the shared one.

Per frame: Plane Position/Orientation, Pixel Measures, Frame Content (TemporalPositionIndex,
FrameAcquisitionDateTime), MR Timing (TR), MR Echo (TE), Contrast/Bolus Usage. The frames then go through
the same series/phase machinery as classic one-slice files, so phases are split, ordered and named
(``pre, post1..``) exactly alike.
"""

from __future__ import annotations

from typing import Any

import pydicom

from common.preprocess.dicom_headers import SliceHeader, parse_tm


def _item(fg: Any, shared: Any, seq: str) -> Any:
    """First item of functional group ``seq`` in the frame's group, else in the shared group; None."""
    for grp in (fg, shared):
        if grp is not None and seq in grp and len(grp[seq].value):
            return grp[seq].value[0]
    return None


def _attr(fg: Any, shared: Any, seq: str, name: str) -> Any:
    item = _item(fg, shared, seq)
    return None if item is None else item.get(name)


def _num(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _time_of_dt(dt: Any) -> float | None:
    """Seconds after midnight of a DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX)."""
    text = str(dt or "").strip().split("+")[0].split("-")[0]
    return parse_tm(text[8:]) if len(text) > 8 else None


def enhanced_headers(path: str) -> tuple[list[SliceHeader], str]:
    """One header per frame of an Enhanced MR file, or ([], reason naming the missing group/field)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        return [], f"unreadable DICOM ({type(exc).__name__}: {exc})"
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    n = int(ds.get("NumberOfFrames", 0) or 0)
    if not per or len(per) != n:
        return [], f"Enhanced MR: PerFrameFunctionalGroupsSequence has {len(per or [])} items for {n} frames"
    for tag in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if ds.get(tag) in (None, ""):
            return [], f"incomplete MR header (missing {tag})"
    agent = bool(str(ds.get("ContrastBolusAgent", "") or "").strip()) or "ContrastBolusAgentSequence" in ds
    out = []
    for k, fg in enumerate(per):
        iop = _attr(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = _attr(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
        ps = _attr(fg, shared, "PixelMeasuresSequence", "PixelSpacing")
        if iop is None or ipp is None or ps is None or len(iop) != 6 or len(ipp) != 3 or len(ps) != 2:
            return [], (f"Enhanced MR frame {k + 1} of PatientID {ds.get('PatientID', '?')}: missing/malformed "
                        f"Plane Orientation, Plane Position or "
                        f"Pixel Measures functional group")
        used = _attr(fg, shared, "ContrastBolusUsageSequence", "ContrastBolusAgentAdministered")
        fc = _item(fg, None, "FrameContentSequence")
        tpi = fc.get("TemporalPositionIndex") if fc is not None else None
        acq = _time_of_dt(fc.get("FrameAcquisitionDateTime") or fc.get("FrameReferenceDateTime")) \
            if fc is not None else None
        out.append(SliceHeader(
            path=path, patient_id=str(ds.PatientID).strip(), study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.get("SOPInstanceUID", path)),
            study_date=str(ds.get("StudyDate", "") or ""), study_time=str(ds.get("StudyTime", "") or ""),
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            series_number=int(ds.get("SeriesNumber", 0) or 0),
            image_type=tuple(str(t).strip().upper() for t in (ds.get("ImageType") or [])),
            iop=tuple(float(c) for c in iop), ipp=tuple(float(c) for c in ipp),  # type: ignore[arg-type]
            pixel_spacing=(float(ps[0]), float(ps[1])), rows=int(ds.Rows), cols=int(ds.Columns),
            temporal_id=int(tpi) if tpi is not None else None, trigger_time=None, acq_time=acq,
            instance=k + 1, manufacturer=str(ds.get("Manufacturer", "") or ""),
            model=str(ds.get("ManufacturerModelName", "") or ""), field_strength=_num(ds.get("MagneticFieldStrength")),
            tr=_num(_attr(fg, shared, "MRTimingAndRelatedParametersSequence", "RepetitionTime")),
            te=_num(_attr(fg, shared, "MREchoSequence", "EffectiveEchoTime")),
            slice_thickness=_num(_attr(fg, shared, "PixelMeasuresSequence", "SliceThickness")),
            contrast=(str(used).upper() == "YES") if used is not None else agent,
            trial_site=str(ds.get("ClinicalTrialSiteID", "") or ""), frame=k,
        ))
    return out, ""


__all__ = ["enhanced_headers"]
