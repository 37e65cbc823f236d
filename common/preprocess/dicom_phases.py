"""DCE phase naming and series selection: choose the visit, the DCE phases (named ``pre, post1..postK``
by acquisition time, Duke SeriesDescription conventions as the fallback; see
data/duke/duke_series_descriptions.md) and the T2 series of one patient.

Phase times are seconds after midnight in DICOM; :func:`phase_seconds` is the one place that turns them
into seconds after the pre-contrast phase, across midnight too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from common.preprocess.dicom_headers import DicomError, SliceHeader
from common.preprocess.dicom_series import Phase, Series, Study, build_studies

_ORD_WORDS = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6, "first": 1, "second": 2, "third": 3,
              "fourth": 4}


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


_LOCALISER_RE = re.compile(r"(locali[sz]er|\bloc\b|scout|survey|3[ -]?plane|tri[ -]?pilot|\bcal\b|calibration|"
                           r"asset|\bref\b)", re.I)
_DWI_RE = re.compile(r"(\bdwi|diffusion|\bdiff\b|ep2d_diff|resolve|\badc\b|\btrace\w*|\bb ?\d{2,4}\b|\bdti\b)", re.I)


def classify(series: Series) -> str:
    """dce | t2 | t1 (non fat-suppressed, not dynamic) | derived | localiser | dwi | other, from headers
    (ImageType, TE/TR) and the SeriesDescription."""
    h = series.slices[0]
    d = series.description
    if "DERIVED" in h.image_type or "SECONDARY" in h.image_type or _DERIVED_RE.search(d):
        return "derived"
    if "LOCALIZER" in h.image_type or _LOCALISER_RE.search(d):
        return "localiser"
    if "DIFFUSION" in h.image_type or "ADC" in h.image_type or _DWI_RE.search(d):
        return "dwi"
    if _T2_RE.search(d) or (h.te is not None and h.te >= 50 and (h.tr or 0) >= 1000):
        return "t2"
    if _T1_NONFS_RE.search(d):
        return "t1"
    dyn_words = re.search(r"dyn|vibrant|dce|pass|phase|ph\d|fl3d|3dfgre|fgre|thrive|\bpre\b|\bpost", d, re.I)
    if len(series.phases) > 1 or dyn_words or description_phase(d) is not None:
        return "dce"
    if h.tr is not None and h.tr < 15 and len(series.slices) >= 8:
        return "dce"
    return "other"


DAY_S = 86400.0
HALF_DAY_S = DAY_S / 2


def phase_time(p: Phase) -> float | None:
    """Time of day of a phase in seconds after midnight (AcquisitionTime, else TriggerTime), None if absent."""
    if p.acq_time is not None:
        return float(p.acq_time)
    return p.trigger_time / 1000.0 if p.trigger_time is not None else None


def unwrap_midnight(times: list[float | None]) -> list[float | None]:
    """Times of day of one acquisition made monotonic across midnight: when the known times span more than
    half a day, those in the morning half belong to the next day (a DCE lasts minutes, not hours)."""
    known = [t for t in times if t is not None]
    if not known or max(known) - min(known) <= HALF_DAY_S:
        return list(times)
    return [None if t is None else t + DAY_S if t < HALF_DAY_S else t for t in times]


def relative_seconds(phases: list[Phase]) -> list[float | None]:
    """Seconds of each phase after the first one (midnight wrap handled); None where a time is missing."""
    times = unwrap_midnight([phase_time(p) for p in phases])
    t0 = times[0] if times else None
    return [None if t is None or t0 is None else float(t - t0) for t in times]


def phase_seconds(phases: list[Phase]) -> list[float]:
    """Seconds after the pre-contrast phase of each named phase (kinetics, manifest ``phase_times``);
    the phase indices 0, 1, 2 ... when any phase lacks a time."""
    rel = relative_seconds(phases)
    if any(r is None for r in rel):
        return [float(k) for k in range(len(rel))]
    return [float(r) for r in rel]  # type: ignore[arg-type]


#: PrepConfig.visit values: "pre" = the earliest visit with a DCE (pre-treatment), "early" = the next one
#: (early-treatment), "latest" = the last one, "YYYYMMDD" = the visit of that StudyDate.
VISIT_RULES = ("pre", "early", "latest")


def _visits(studies: list[Study]) -> list[list[Study]]:
    """Studies grouped by StudyDate (a visit), in date order."""
    by_date: dict[str, list[Study]] = defaultdict(list)
    for st in studies:
        by_date[st.date or "?"].append(st)
    return [by_date[d] for d in sorted(by_date, key=lambda d: (d == "?", d))]


def _has_dce(st: Study) -> bool:
    return any(s.kind == "dce" or (s.kind == "broken" and (classify(s) == "dce" or
                                                           description_phase(s.description) is not None))
               for s in st.series)


def choose_study(patient_id: str, studies: list[Study], visit: str, choice: list[str]) -> Study:
    """The study of the requested visit, chosen by headers only: visits are StudyDates holding a DCE series
    (localiser-only or T2-only studies do not count); on one date, the study with the richest DCE."""
    for st in studies:
        for s in st.series:
            s.kind = classify(s) if not s.error else "broken"
    visits = [[st for st in v if _has_dce(st)] for v in _visits(studies)]
    visits = [v for v in visits if v]
    dates = [v[0].date or "?" for v in visits]
    if not visits:
        kinds = ", ".join(f"'{s.description}' ({s.kind})" for st in studies for s in st.series)
        raise DicomError(f"patient {patient_id}: no DCE series in any study (StudyDates "
                         f"{', '.join(st.date or '?' for st in studies)}); series found: {kinds or 'none'}")
    if visit == "pre":
        k = 0
    elif visit == "early":
        if len(visits) < 2:
            raise DicomError(f"patient {patient_id}: visit 'early' requested but only one visit with a DCE "
                             f"(StudyDate {dates[0]})")
        k = 1
    elif visit == "latest":
        k = len(visits) - 1
    elif re.fullmatch(r"\d{8}", visit):
        if visit not in dates:
            raise DicomError(f"patient {patient_id}: no DCE study on StudyDate {visit} (visits: {', '.join(dates)})")
        k = dates.index(visit)
    else:
        raise DicomError(f"unsupported visit rule {visit!r} (pre, early, latest or a StudyDate YYYYMMDD)")
    cands = visits[k]
    study = max(cands, key=lambda st: max((len(s.phases) * len(s.slices) for s in st.series if s.kind == "dce"),
                                          default=0))
    rank = "single study" if len(visits) == 1 else "earliest" if k == 0 else "latest" if k == len(visits) - 1 \
        else f"visit {k + 1}"
    choice.append(f"visit: {visit} = StudyDate {study.date}, {rank}" + (
        f" of {len(visits)} studies with a DCE ({', '.join(dates)})" if len(visits) > 1 else "")
        + f"; study {study.uid}")
    return study


def select_series(patient_id: str, heads: list[SliceHeader], visit: str = "pre") -> Selection:
    """Choose the visit, the DCE phases (named pre, post1..) and T2 of one patient; raise DicomError with
    a precise reason when no usable DCE exists."""
    studies = build_studies(heads)
    if not studies:
        raise DicomError(f"patient {patient_id}: no MR image series")
    choice: list[str] = []
    study = choose_study(patient_id, studies, visit, choice)
    broken = [s for s in study.series if s.kind == "broken"]
    dce = [s for s in study.series if s.kind == "dce"]
    for s in broken:
        if classify(s) == "dce" or description_phase(s.description) is not None:
            raise DicomError(f"patient {patient_id}: DCE {s.error}")
        choice.append(f"ignored broken series '{s.description}': {s.error}")
    others = [f"#{s.number} '{s.description}' ({s.kind})" for s in study.series if s.kind not in ("dce", "broken")]
    if others:
        choice.append("not DCE: " + ", ".join(others))
    phases = _choose_dce(patient_id, dce, choice)
    t2 = _choose_t2(study, choice)
    return Selection(patient_id=patient_id, study=study, phases=phases, t2=t2, choice=choice)


def _choose_dce(pid: str, dce: list[Series], choice: list[str]) -> list[Phase]:
    """The DCE phases of one study, named pre, post1, ... (DicomError when they cannot be)."""
    phases = _dce_candidates(pid, dce, choice)
    if len(phases) < 2:
        raise DicomError(f"patient {pid}: only one DCE phase found ({phases[0].description!r}, series "
                         f"{phases[0].series_uid}); need pre-contrast + at least one post-contrast phase")
    return _name_phases(pid, phases, choice)


def _dce_candidates(pid: str, dce: list[Series], choice: list[str]) -> list[Phase]:
    """The richest multi-phase series, else the single-phase series sharing the commonest geometry."""
    multi = [s for s in dce if len(s.phases) > 1]
    if multi:
        best = max(multi, key=lambda s: (len(s.phases), len(s.slices), -s.number))
        choice.append(f"DCE: multi-phase series #{best.number} '{best.description}' ({len(best.phases)} phases)")
        if len(multi) > 1:
            others = [f"#{s.number} '{s.description}'" for s in multi if s is not best]
            choice.append(f"other multi-phase series not used: {', '.join(others)} (fewer phases/slices)")
        return list(best.phases)
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
    return _dedupe(pid, phases, choice)


def _name_phases(pid: str, phases: list[Phase], choice: list[str]) -> list[Phase]:
    """Order the phases (acquisition time, else SeriesDescription, else TemporalPositionIdentifier), check
    the pre-contrast is there and name them pre, post1, ..."""
    times = unwrap_midnight([phase_time(p) for p in phases])
    single = len({p.series_uid for p in phases}) == len(phases)
    desc_idx = _desc_indices(phases) if single else [None] * len(phases)
    rank = {id(p): i for p, i in zip(phases, desc_idx)}
    desc_ok = all(i is not None for i in desc_idx) and len(set(desc_idx)) == len(desc_idx)
    if all(t is not None for t in times) and len(set(times)) == len(times):
        phases = [p for _, p in sorted(zip(times, phases), key=lambda t: t[0])]  # type: ignore[arg-type,return-value]
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
    known = [i for i in desc_idx if i is not None]
    if single and known and len(known) == len(phases) and 0 not in known:
        raise DicomError(f"patient {pid}: missing pre-contrast phase (DCE series found: "
                         f"{[p.description for p in phases]})")
    if phases[0].contrast and all(p.contrast for p in phases) and rank[id(phases[0])] != 0:
        raise DicomError(f"patient {pid}: missing pre-contrast phase (ContrastBolusAgent set on every DCE "
                         f"phase, first: {phases[0].files[0]})")
    for k, p in enumerate(phases):
        p.name = "pre" if k == 0 else f"post{k}"
    choice.append(f"phases named {rule}: " + ", ".join(
        f"{p.name}={'?' if r is None else '%.0fs' % r}" for p, r in zip(phases, relative_seconds(phases))))
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
        t = phase_time(p)
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


__all__ = ["DAY_S", "VISIT_RULES", "Selection", "choose_study", "classify", "description_phase", "phase_seconds",
           "phase_time", "relative_seconds",
           "select_series", "unwrap_midnight"]
