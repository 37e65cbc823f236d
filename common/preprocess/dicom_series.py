"""DICOM series geometry: group one patient's headers into studies and series, split multi-phase series
into phases and order each phase's slices along the slice normal (checking positions and spacing)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from common.preprocess.dicom_headers import DicomError, SliceHeader, parse_tm

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
    if not groups and repeats > 1 and all(s.frame is not None for s in sl) and \
            len({s.path for s in sl}) == repeats:  # Enhanced MR, one multi-frame file per phase, no timing
        groups, how = {p: [s for s in sl if s.path == p] for p in sorted({s.path for s in sl})}, "file"
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


__all__ = ["Phase", "Series", "Study", "build_studies", "split_series"]
