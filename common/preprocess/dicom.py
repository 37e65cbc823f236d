"""Find, group, order and name DICOM series in any folder layout (NBIA, I-SPY2, PACS export, flat).

Files are grouped by the headers (PatientID -> StudyInstanceUID -> SeriesInstanceUID), never by folder
names; slices are ordered by position along the slice normal; multi-phase series are split into their
phases; DCE phases are named ``pre, post1..postK`` by acquisition time, with the Duke SeriesDescription
conventions (data/duke/duke_series_descriptions.md) as the fallback. Headers are read with
``stop_before_pixels``; the tree is only read.
"""

from __future__ import annotations

import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

#: Header tags read during discovery (everything before the pixels that the pipeline needs).
HEADER_TAGS = [
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "StudyDate", "StudyTime", "SeriesDescription", "SeriesNumber", "ImageType", "ImageOrientationPatient",
    "ImagePositionPatient", "PixelSpacing", "Rows", "Columns", "TemporalPositionIdentifier", "TriggerTime",
    "AcquisitionTime", "ContentTime", "InstanceNumber", "Manufacturer", "ManufacturerModelName",
    "MagneticFieldStrength", "RepetitionTime", "EchoTime", "SliceThickness", "ContrastBolusAgent",
    "ClinicalTrialSiteID", "NumberOfTemporalPositions", "AcquisitionNumber",
]
_TAGS = {kw: tag_for_keyword(kw) for kw in HEADER_TAGS}
_MR_IMAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"}  # MR, Enhanced MR
_ORD_WORDS = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6, "first": 1, "second": 2, "third": 3,
              "fourth": 4}


class DicomError(Exception):
    """A patient-level problem in the DICOM data; the message names the file/series/field."""


@dataclass
class SliceHeader:
    """The header fields of one image file that discovery and reading need."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    description: str
    series_number: int
    image_type: tuple[str, ...]
    iop: tuple[float, ...]
    ipp: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int
    temporal_id: int | None
    trigger_time: float | None
    acq_time: float | None  # seconds after midnight
    instance: int
    manufacturer: str
    model: str
    field_strength: float | None
    tr: float | None
    te: float | None
    slice_thickness: float | None
    contrast: bool
    trial_site: str


@dataclass
class Phase:
    """One 3-D volume: slices of one series (and one temporal position), ordered along the normal."""

    series_uid: str
    description: str
    number: int
    slices: list[SliceHeader]
    acq_time: float | None
    trigger_time: float | None
    temporal_id: int | None
    spacing_z: float
    contrast: bool
    name: str = ""

    @property
    def files(self) -> list[str]:
        return [s.path for s in self.slices]

    @property
    def geometry_key(self) -> tuple:
        h = self.slices[0]
        return (tuple(round(c, 3) for c in h.iop), h.rows, h.cols, len(self.slices))


@dataclass
class Series:
    """All image files of one SeriesInstanceUID, split into phases."""

    uid: str
    description: str
    number: int
    slices: list[SliceHeader]
    phases: list[Phase] = field(default_factory=list)
    kind: str = "other"  # dce | t2 | t1 | derived | other
    error: str = ""


@dataclass
class Study:
    uid: str
    date: str
    time: str
    series: list[Series]


@dataclass
class Selection:
    """The series chosen for one patient: named DCE phases, optional T2, and why."""

    patient_id: str
    study: Study
    phases: list[Phase]  # pre, post1, ... in order, .name set
    t2: Phase | None
    choice: list[str]

    @property
    def first(self) -> SliceHeader:
        return self.phases[0].slices[0]


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def _int(value: object, default: int | None = None) -> int | None:
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def parse_tm(value: object) -> float | None:
    """DICOM TM (HHMMSS.frac, possibly with colons) -> seconds after midnight."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", text)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return h * 3600 + mi * 60 + s + float(m.group(4) or 0.0)


def _raw_values(ds: pydicom.Dataset) -> dict[str, object]:
    """Header values without pydicom's per-element conversion (4x faster): strings for text VRs,
    ints for US; anything pydicom already converted is taken as is."""
    little = ds.original_encoding[1] is not False
    out: dict[str, object] = {}
    for kw, tag in _TAGS.items():
        elem = ds.get_item(tag)
        if elem is None:
            continue
        if not isinstance(elem, RawDataElement):
            val = elem.value
            out[kw] = "\\".join(str(v) for v in val) if isinstance(val, (list, tuple, MultiValue)) else val
            continue
        raw = elem.value
        if raw is None or len(raw) == 0:
            continue
        vr = elem.VR or dictionary_VR(tag)
        if vr == "US":
            out[kw] = struct.unpack("<H" if little else ">H", raw[:2])[0]
        elif vr in ("UL", "SL", "SS", "FL", "FD", "SQ", "OB", "OW", "UN"):
            out[kw] = ds[tag].value  # rare binary VRs: let pydicom convert
        else:
            out[kw] = raw.decode("latin-1").strip("\x00 ")
    return out


def _floats(text: object) -> tuple[float, ...]:
    return tuple(float(c) for c in str(text).split("\\") if c.strip() != "")


def read_header(path: str) -> tuple[SliceHeader | None, str]:
    """Read one file's header (no pixels). Returns (header, "") or (None, reason it is not usable)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS.values()))
        v = _raw_values(ds)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as exc:  # truncated / corrupt files raise many kinds of errors
        return None, f"unreadable DICOM ({type(exc).__name__}: {exc})"
    try:
        modality = str(v.get("Modality", "") or "")
        sop_class = str(v.get("SOPClassUID", "") or "")
        if not modality and str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) in _MR_IMAGE_CLASSES:
            return None, "incomplete MR header (missing Modality; truncated file?)"
        if modality != "MR":
            return None, f"Modality {modality or 'missing'} (not MR)"
        if sop_class and sop_class not in _MR_IMAGE_CLASSES:
            return None, f"SOPClassUID {sop_class} is not an MR image"
        for tag in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "ImageOrientationPatient",
                    "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
            if v.get(tag) in (None, ""):
                return None, f"incomplete MR header (missing {tag})"
        iop, ipp, ps = _floats(v["ImageOrientationPatient"]), _floats(v["ImagePositionPatient"]), _floats(
            v["PixelSpacing"])
        if len(iop) != 6 or len(ipp) != 3 or len(ps) != 2:
            return None, "malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing"
        agent = str(v.get("ContrastBolusAgent", "") or "").strip()
        acq = parse_tm(v.get("AcquisitionTime"))
        head = SliceHeader(
            path=path, patient_id=str(v["PatientID"]).strip(), study_uid=str(v["StudyInstanceUID"]),
            series_uid=str(v["SeriesInstanceUID"]), sop_uid=str(v.get("SOPInstanceUID", "") or path),
            study_date=str(v.get("StudyDate", "") or ""), study_time=str(v.get("StudyTime", "") or ""),
            description=str(v.get("SeriesDescription", "") or "").strip(),
            series_number=_int(v.get("SeriesNumber"), 0) or 0,
            image_type=tuple(t.strip().upper() for t in str(v.get("ImageType", "") or "").split("\\")),
            iop=iop, ipp=ipp, pixel_spacing=ps, rows=int(v["Rows"]), cols=int(v["Columns"]),  # type: ignore[arg-type]
            temporal_id=_int(v.get("TemporalPositionIdentifier")), trigger_time=_float(v.get("TriggerTime")),
            acq_time=acq if acq is not None else parse_tm(v.get("ContentTime")),
            instance=_int(v.get("InstanceNumber"), 0) or 0,
            manufacturer=str(v.get("Manufacturer", "") or ""), model=str(v.get("ManufacturerModelName", "") or ""),
            field_strength=_float(v.get("MagneticFieldStrength")), tr=_float(v.get("RepetitionTime")),
            te=_float(v.get("EchoTime")), slice_thickness=_float(v.get("SliceThickness")),
            contrast=bool(agent), trial_site=str(v.get("ClinicalTrialSiteID", "") or ""),
        )
    except Exception as exc:
        return None, f"malformed header ({type(exc).__name__}: {exc})"
    return head, ""


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (sorted, so discovery is deterministic); DICOMDIR excluded."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.upper() == "DICOMDIR" or name.startswith("."):
                continue
            out.append(os.path.join(dirpath, name))
    return out


def scan_files(paths: Iterable[str]) -> tuple[list[SliceHeader], list[dict[str, str]], int]:
    """Headers of the usable MR image files among ``paths``; the others with their reason; bytes seen."""
    heads, ignored, n_bytes = [], [], 0
    for p in paths:
        try:
            n_bytes += os.path.getsize(p)
        except OSError:
            pass
        h, why = read_header(p)
        if h is None:
            ignored.append({"file": p, "reason": why})
        else:
            heads.append(h)
    return heads, ignored, n_bytes


def group_patients(heads: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """PatientID -> its headers, duplicated SOPInstanceUIDs (the same file copied twice) dropped."""
    out: dict[str, list[SliceHeader]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for h in sorted(heads, key=lambda h: h.path):
        key = (h.series_uid, h.sop_uid)
        if key in seen:
            continue
        seen.add(key)
        out[h.patient_id].append(h)
    return dict(out)


def _normal(iop: tuple[float, ...]) -> np.ndarray:
    u, v = np.asarray(iop[:3]), np.asarray(iop[3:])
    return np.cross(u, v)


def _order_phase(uid: str, desc: str, number: int, slices: list[SliceHeader], label: str) -> Phase:
    """Sort one phase's slices along the normal and check positions and spacing are consistent."""
    n = _normal(slices[0].iop)
    pos = np.array([float(np.dot(s.ipp, n)) for s in slices])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    where = f"series {uid} ('{desc}'{label})"
    if len(slices) < 2:
        raise DicomError(f"{where}: only {len(slices)} slice(s)")
    gaps = np.diff(pos)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise DicomError(f"{where}: two slices at the same position ({slices[i].path}, {slices[i + 1].path})")
    med = float(np.median(gaps))
    bad = np.abs(gaps - med) > max(0.05 * med, 0.01)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DicomError(f"{where}: inconsistent slice spacing ({gaps[i]:.3f} mm vs median {med:.3f} mm "
                         f"between {slices[i].path} and {slices[i + 1].path})")
    for s in slices:
        if (s.rows, s.cols) != (slices[0].rows, slices[0].cols):
            raise DicomError(f"{where}: matrix {s.rows}x{s.cols} in {s.path} differs from "
                             f"{slices[0].rows}x{slices[0].cols}")
    times = [s.acq_time for s in slices if s.acq_time is not None]
    trig = [s.trigger_time for s in slices if s.trigger_time is not None]
    tids = [s.temporal_id for s in slices if s.temporal_id is not None]
    return Phase(series_uid=uid, description=desc, number=number, slices=slices,
                 acq_time=min(times) if times else None, trigger_time=min(trig) if trig else None,
                 temporal_id=tids[0] if tids else None, spacing_z=med,
                 contrast=any(s.contrast for s in slices))


def split_series(series: Series) -> list[Phase]:
    """Split a series into phases (TemporalPositionIdentifier, TriggerTime, AcquisitionTime, repeated
    positions, in that order of preference) and order each phase's slices along the normal."""
    sl = series.slices
    iops = {tuple(round(c, 4) for c in s.iop) for s in sl}
    if len(iops) > 1:
        raise DicomError(f"series {series.uid} ('{series.description}'): mixed orientations "
                         f"(ImageOrientationPatient takes {len(iops)} values)")
    n = _normal(sl[0].iop)
    pos = np.round([float(np.dot(s.ipp, n)) for s in sl], 2)
    n_pos = len(set(pos.tolist()))
    repeats = len(sl) // max(n_pos, 1)
    groups: dict[object, list[SliceHeader]] = {}
    how = ""
    for attr, label in (("temporal_id", "TemporalPositionIdentifier"), ("trigger_time", "TriggerTime"),
                        ("acq_time", "AcquisitionTime")):
        vals = [getattr(s, attr) for s in sl]
        if None in vals or len(set(vals)) < 2:
            continue
        cand: dict[object, list[SliceHeader]] = defaultdict(list)
        for s, v in zip(sl, vals):
            cand[v].append(s)
        if len(cand) == repeats or (attr == "temporal_id" and len(cand) > 1):
            groups, how = dict(cand), label
            break
    if not groups:
        if repeats > 1 and len(sl) == repeats * n_pos:
            # repeated positions with no usable timing tag: the k-th occurrence of a position (in
            # InstanceNumber order) belongs to phase k
            by_pos: dict[float, list[SliceHeader]] = defaultdict(list)
            for s, p in sorted(zip(sl, pos), key=lambda t: t[0].instance):
                by_pos[p].append(s)
            groups = {k: [by_pos[p][k] for p in by_pos] for k in range(repeats)}
            how = "repeated positions (InstanceNumber order)"
        else:
            groups, how = {0: sl}, ""
    phases = []
    for key in sorted(groups, key=lambda k: (str(type(k)), k)):
        label = f", {how}={key}" if how else ""
        phases.append(_order_phase(series.uid, series.description, series.number, groups[key], label))
    if len({len(p.slices) for p in phases}) > 1:
        raise DicomError(f"series {series.uid} ('{series.description}'): phases split by {how} have different "
                         f"slice counts {[len(p.slices) for p in phases]}")
    return phases


# ----------------------------------------------------------------------------- naming
_PRE_RE = re.compile(r"(\bpre\b|_ pre$|\bpre$)", re.I)
_T1_NONFS_RE = re.compile(r"^(ax t1\b|ax 3d t1 non fs|ax 3d t1 bilateral|ax ideal breast)", re.I)
_T2_RE = re.compile(r"(\bt2|t2w|t2_|stir|tirm)", re.I)
_DERIVED_RE = re.compile(r"(\bsub\b|subtract|\bmip\b|\bpe\d?\b|\bser\b|\bcad\b|maps?\b|\bmpr\b|reformat|"
                         r"\bpe[12]\b|washout|segmentation)", re.I)


def description_phase(desc: str) -> int | None:
    """Phase index from a Duke-style SeriesDescription: 0 = pre, k = k-th post pass, None = unknown."""
    d = desc.strip()
    m = re.match(r"^ph(\d+)\s*/", d, re.I)
    if m:
        return int(m.group(1))
    m = re.search(r"\b(1st|2nd|3rd|4th|5th|6th|first|second|third|fourth)\b\s*(pass|pas|ax|post)?", d, re.I)
    if m and (m.group(2) or re.match(r"^\s*(1st|2nd|3rd|4th)\s+ax\s+dyn", d, re.I)):
        return _ORD_WORDS[m.group(1).lower()]
    m = re.search(r"\bpost[ _-]?(\d+)\b", d, re.I)
    if m:
        return int(m.group(1))
    if _PRE_RE.search(d):
        return 0
    return None


def classify(series: Series) -> str:
    """dce | t2 | t1 (non fat-suppressed, not dynamic) | derived | other, from headers and description."""
    h = series.slices[0]
    d = series.description
    if "DERIVED" in h.image_type or "SECONDARY" in h.image_type or _DERIVED_RE.search(d):
        return "derived"
    if _T2_RE.search(d) or (h.te is not None and h.te >= 50 and (h.tr or 0) >= 1000):
        return "t2"
    if _T1_NONFS_RE.search(d):
        return "t1"
    dyn_words = re.search(r"dyn|vibrant|dce|pass|phase|ph\d|fl3d|3dfgre|fgre|thrive|\bpre\b|\bpost", d, re.I)
    if len(series.phases) > 1 or dyn_words or description_phase(d) is not None:
        return "dce"
    if h.tr is not None and h.tr < 15:
        return "dce"
    return "other"


def build_studies(heads: list[SliceHeader]) -> list[Study]:
    """Group one patient's headers into studies and series (sorted by StudyDate, StudyTime)."""
    by_study: dict[str, dict[str, list[SliceHeader]]] = defaultdict(lambda: defaultdict(list))
    for h in heads:
        by_study[h.study_uid][h.series_uid].append(h)
    studies = []
    for suid, series in by_study.items():
        first = next(iter(series.values()))[0]
        items = []
        for uid, sl in series.items():
            ser = Series(uid=uid, description=sl[0].description, number=sl[0].series_number, slices=sl)
            try:
                ser.phases = split_series(ser)
            except DicomError as exc:
                ser.error = str(exc)
            items.append(ser)
        items.sort(key=lambda s: (s.number, s.uid))
        studies.append(Study(uid=suid, date=first.study_date, time=first.study_time, series=items))
    studies.sort(key=lambda s: (s.date or "99999999", parse_tm(s.time) or 0.0, s.uid))
    return studies


def _phase_time(p: Phase) -> float | None:
    if p.acq_time is not None:
        return p.acq_time
    return p.trigger_time / 1000.0 if p.trigger_time is not None else None


def select_series(patient_id: str, heads: list[SliceHeader], visit: str = "pre") -> Selection:
    """Choose the visit, the DCE phases (named pre, post1..) and T2 of one patient; raise DicomError with
    a precise reason when no usable DCE exists."""
    studies = build_studies(heads)
    if not studies:
        raise DicomError(f"patient {patient_id}: no MR image series")
    choice: list[str] = []
    if visit != "pre":
        raise DicomError(f"unsupported visit rule {visit!r} (only 'pre' = earliest StudyDate)")
    study = studies[0]
    if len(studies) > 1:
        choice.append(f"visit: earliest of {len(studies)} studies (StudyDate {study.date}; later: "
                      f"{', '.join(s.date or '?' for s in studies[1:])})")
    else:
        choice.append(f"visit: single study (StudyDate {study.date})")
    for s in study.series:
        s.kind = classify(s) if not s.error else "broken"
    broken = [s for s in study.series if s.kind == "broken"]
    dce = [s for s in study.series if s.kind == "dce"]
    for s in broken:
        if classify(s) == "dce" or description_phase(s.description) is not None:
            raise DicomError(f"patient {patient_id}: DCE {s.error}")
        choice.append(f"ignored broken series '{s.description}': {s.error}")
    if not dce:
        kinds = ", ".join(f"'{s.description}' ({s.kind})" for s in study.series)
        raise DicomError(f"patient {patient_id}: no DCE series in study {study.uid} (StudyDate {study.date}); "
                         f"series found: {kinds or 'none'}")
    phases = _choose_dce(patient_id, dce, choice)
    t2 = _choose_t2(study, choice)
    return Selection(patient_id=patient_id, study=study, phases=phases, t2=t2, choice=choice)


def _choose_dce(pid: str, dce: list[Series], choice: list[str]) -> list[Phase]:
    multi = [s for s in dce if len(s.phases) > 1]
    if multi:
        best = max(multi, key=lambda s: (len(s.phases), len(s.slices), -s.number))
        phases = list(best.phases)
        choice.append(f"DCE: multi-phase series #{best.number} '{best.description}' ({len(phases)} phases)")
        if len(multi) > 1:
            others = [f"#{s.number} '{s.description}'" for s in multi if s is not best]
            choice.append(f"other multi-phase series not used: {', '.join(others)} (fewer phases/slices)")
    else:
        # one series per phase: keep those sharing the geometry of the largest group
        groups: dict[tuple, list[Phase]] = defaultdict(list)
        for s in dce:
            groups[s.phases[0].geometry_key].append(s.phases[0])
        key = max(groups, key=lambda k: (len(groups[k]), k[3]))
        phases = groups[key]
        dropped = [p for k, g in groups.items() if k != key for p in g]
        choice.append(f"DCE: {len(phases)} single-phase series " + ", ".join(
            f"#{p.number} '{p.description}'" for p in sorted(phases, key=lambda p: p.number)))
        if dropped:
            choice.append("different geometry, not used: " + ", ".join(f"#{p.number} '{p.description}'"
                                                                     for p in dropped))
        phases = _dedupe(pid, phases, choice)
    if len(phases) < 2:
        raise DicomError(f"patient {pid}: only one DCE phase found ({phases[0].description!r}, series "
                         f"{phases[0].series_uid}); need pre-contrast + at least one post-contrast phase")
    times = [_phase_time(p) for p in phases]
    single = len({p.series_uid for p in phases}) == len(phases)
    desc_idx = _desc_indices(phases) if single else [None] * len(phases)
    rank = {id(p): i for p, i in zip(phases, desc_idx)}
    desc_ok = all(i is not None for i in desc_idx) and len(set(desc_idx)) == len(desc_idx)
    if all(t is not None for t in times) and len(set(times)) == len(times):
        phases = [p for _, p in sorted(zip(times, phases), key=lambda t: t[0])]
        rule = "by acquisition time"
        if desc_ok and [rank[id(p)] for p in phases] != sorted(desc_idx):  # type: ignore[type-var]
            choice.append("warning: SeriesDescription order disagrees with acquisition time; time used")
    elif desc_ok:
        phases = sorted(phases, key=lambda p: rank[id(p)])  # type: ignore[arg-type,return-value]
        rule = "by SeriesDescription (acquisition times missing or tied)"
    elif all(p.temporal_id is not None for p in phases):
        phases = sorted(phases, key=lambda p: p.temporal_id)  # type: ignore[arg-type]
        rule = "by TemporalPositionIdentifier"
    else:
        raise DicomError(f"patient {pid}: cannot order DCE phases: acquisition times missing/tied and "
                         f"SeriesDescriptions {[p.description for p in phases]} not recognised")
    # pre-contrast present?
    first_idx = rank[id(phases[0])]
    known = [i for i in desc_idx if i is not None]
    if single and known and len(known) == len(phases) and 0 not in known:
        raise DicomError(f"patient {pid}: missing pre-contrast phase (DCE series found: "
                         f"{[p.description for p in phases]})")
    if phases[0].contrast and all(p.contrast for p in phases) and first_idx != 0:
        raise DicomError(f"patient {pid}: missing pre-contrast phase (ContrastBolusAgent set on every DCE "
                         f"phase, first: {phases[0].files[0]})")
    for k, p in enumerate(phases):
        p.name = "pre" if k == 0 else f"post{k}"
    t0 = _phase_time(phases[0])
    choice.append(f"phases named {rule}: " + ", ".join(
        f"{p.name}={'%.0fs' % (_phase_time(p) - t0) if t0 is not None and _phase_time(p) is not None else '?'}"
        for p in phases))
    return phases


def _desc_indices(phases: list[Phase]) -> list[int | None]:
    """Description phase indices; Duke convention: the one series without a pass marker among
    marked post-contrast series (``ax 3d dyn`` next to ``Ph1/ax 3d dyn``...) is the pre-contrast."""
    idx = [description_phase(p.description) for p in phases]
    if idx.count(None) == 1 and len(idx) > 1 and all(i is None or i >= 1 for i in idx):
        idx = [0 if i is None else i for i in idx]
    return idx


def _dedupe(pid: str, phases: list[Phase], choice: list[str]) -> list[Phase]:
    """Same phase acquired twice (same description role, or same acquisition time): keep the later
    SeriesNumber (a repeat replaces a failed acquisition) and record the choice."""
    def role(p: Phase) -> object:
        idx = description_phase(p.description)
        if idx is not None:
            return ("desc", idx)
        t = _phase_time(p)
        return ("time", round(t, 1)) if t is not None else ("uid", p.series_uid)

    by_role: dict[object, list[Phase]] = defaultdict(list)
    for p in phases:
        by_role[role(p)].append(p)
    out = []
    for r, group in by_role.items():
        group.sort(key=lambda p: (p.number, p.series_uid))
        keep = group[-1]
        if len(group) > 1:
            choice.append(f"duplicate series for the same phase ({', '.join(f'#{p.number} {p.description!r}' for p in group)}): "
                          f"kept #{keep.number} (highest SeriesNumber)")
        out.append(keep)
    return out


def _choose_t2(study: Study, choice: list[str]) -> Phase | None:
    t2 = [s for s in study.series if s.kind == "t2" and s.phases]
    if not t2:
        choice.append("T2: none")
        return None
    best = max(t2, key=lambda s: (len(s.slices), -s.number))
    ph = best.phases[0]
    ph.name = "t2"
    choice.append(f"T2: series #{best.number} '{best.description}'")
    return ph


__all__ = ["DicomError", "Phase", "Selection", "Series", "SliceHeader", "Study", "build_studies",
           "classify", "description_phase", "group_patients", "list_files", "parse_tm", "read_header",
           "scan_files", "select_series", "split_series"]
