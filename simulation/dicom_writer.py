"""Write phantom volumes as real DICOM MR Image Storage files (one file per slice, Explicit VR LE).

UIDs are name-based UUIDs (``2.25.<uuid5>``) derived from the cohort seed, and no
timestamp of the writing moment enters a file, so a seed always produces the same bytes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import __version_info__ as _PYDICOM_VERSION
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

from simulation.cohort_sites import Geometry

#: DICOM Manufacturer strings for MAMA-MIA vendor names.
MANUFACTURER_TAG = {"GE": "GE MEDICAL SYSTEMS", "SIEMENS": "SIEMENS", "Philips": "Philips Medical Systems"}


#: Namespace of the name-based (version 5) UUIDs behind every UID the generator writes.
UID_NAMESPACE = uuid.UUID("6f3c1f0e-9a51-5d1b-8c1e-fedc0c0a0b01")


def uid(*parts: object) -> str:
    """Deterministic UID ``2.25.<uuid5 as integer>`` (DICOM PS3.5 B.2) from the given parts.

    (``pydicom.uid.generate_uid(prefix=None, ...)`` ignores ``entropy_srcs`` and returns a random
    UUID, so the name-based UUID is built here.)
    """
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "|".join(str(p) for p in parts)).int)


@dataclass
class StudyContext:
    """Patient- and study-level tags shared by every series of one study (identifiers are fake)."""

    patient_id: str
    patient_name: str
    birth_date: str
    age_years: float
    accession: str
    institution: str
    study_uid: str
    frame_uid: str
    study_date: str  # YYYYMMDD
    study_time_s: int  # seconds after midnight of the first (pre-contrast) acquisition
    study_description: str
    study_id: str
    trial_protocol: str | None = None  # I-SPY-like sites: ClinicalTrial* tags
    trial_site: str | None = None
    time_point: str | None = None


@dataclass
class ScannerInfo:
    """Acquisition tags of one scanner."""

    manufacturer: str  # MAMA-MIA spelling (GE, SIEMENS, Philips)
    model: str
    field_strength: float
    repetition_time: float
    echo_time: float
    bits_stored: int
    rescale_slope: float
    patient_position: str = "FFP"


def safe_name(text: str) -> str:
    """Folder-safe text as the NBIA retriever writes it (``/`` and other path characters removed)."""
    return re.sub(r'[/\\:*?"<>|]', "", text).strip()


def _tm(seconds: float) -> str:
    seconds = seconds % 86400
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _base_dataset(ctx: StudyContext, sc: ScannerInfo, geom: Geometry, series_uid: str, series_number: int,
                  description: str, u: np.ndarray, v: np.ndarray, n_temporal: int, t2: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ctx.study_date
    ds.StudyTime = _tm(ctx.study_time_s - 120)
    ds.SeriesTime = _tm(ctx.study_time_s)
    ds.AccessionNumber = ctx.accession
    ds.Modality = "MR"
    ds.Manufacturer = MANUFACTURER_TAG.get(sc.manufacturer, sc.manufacturer)
    ds.InstitutionName = ctx.institution
    ds.ReferringPhysicianName = "REFERRER^FAKE"
    ds.StudyDescription = ctx.study_description
    ds.SeriesDescription = description
    ds.ManufacturerModelName = sc.model
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ctx.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{int(ctx.age_years):03d}Y" if ctx.age_years == ctx.age_years else ""
    if ctx.trial_site:
        ds.ClinicalTrialSponsorName = "FEDPCR SYNTHETIC"
        ds.ClinicalTrialProtocolID = ctx.trial_protocol or ""
        ds.ClinicalTrialProtocolName = ctx.trial_protocol or ""
        ds.ClinicalTrialSiteID = ctx.trial_site
        ds.ClinicalTrialSiteName = ctx.trial_site
        ds.ClinicalTrialSubjectID = ctx.patient_id
        if ctx.time_point:
            ds.ClinicalTrialTimePointID = ctx.time_point
    ds.BodyPartExamined = "BREAST"
    ds.ScanningSequence = "SE" if t2 else "GR"
    ds.SequenceVariant = "SK" if t2 else "SS\\SP"
    ds.MRAcquisitionType = "2D" if t2 else "3D"
    ds.SliceThickness = f"{geom.slice_mm:.4f}"
    ds.SpacingBetweenSlices = f"{geom.slice_mm:.4f}"
    ds.RepetitionTime = f"{(3500.0 if t2 else sc.repetition_time):.3f}"
    ds.EchoTime = f"{(90.0 if t2 else sc.echo_time):.3f}"
    ds.MagneticFieldStrength = f"{sc.field_strength:g}"
    ds.FlipAngle = "90" if t2 else "10"
    ds.PatientPosition = sc.patient_position
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ctx.study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [f"{c:g}" for c in (*u, *v)]
    ds.FrameOfReferenceUID = ctx.frame_uid
    ds.PositionReferenceIndicator = ""
    if not t2:
        ds.NumberOfTemporalPositions = n_temporal
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geom.rows
    ds.Columns = geom.cols
    ds.PixelSpacing = [f"{geom.pixel_mm:.4f}", f"{geom.pixel_mm:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = sc.bits_stored
    ds.HighBit = sc.bits_stored - 1
    ds.PixelRepresentation = 0
    if sc.rescale_slope != 1.0:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{sc.rescale_slope:.6f}"
        ds.RescaleType = "US"
    return ds


def write_series(folder: Path, ctx: StudyContext, sc: ScannerInfo, geom: Geometry, origin: np.ndarray,
                 u: np.ndarray, v: np.ndarray, n: np.ndarray, series_uid: str, series_number: int, description: str,
                 blocks: list[tuple[np.ndarray, int, int]], instance_order: str, rng: np.random.Generator,
                 n_temporal: int, t2: bool = False, contrast: str = "MAGNEVIST") -> int:
    """Write one series; ``blocks`` = [(volume (z,y,x) uint16, time s, TemporalPositionIdentifier)].

    Each block is a consecutive run of InstanceNumbers (I-SPY style holds all phases in one series).
    ``instance_order`` asc | desc | random: how InstanceNumber (and the file name) relates to the
    slice position; readers must order by ImagePositionPatient. Returns the number of files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(ctx, sc, geom, series_uid, series_number, description, u, v, n_temporal, t2)
    nz = geom.slices
    if instance_order == "desc":
        perm = np.arange(nz)[::-1]
    elif instance_order == "random":
        perm = rng.permutation(nz)
    else:
        perm = np.arange(nz)
    count = 0
    for b, (vol, t, tpi) in enumerate(blocks):
        flat = vol[vol > 0]
        centre = float(np.percentile(flat, 60)) if flat.size else 100.0
        ds.WindowCenter = f"{centre:.0f}"
        ds.WindowWidth = f"{2 * centre:.0f}"
        acq = _tm(ctx.study_time_s + t)
        ds.AcquisitionTime = ds.ContentTime = acq
        if not t2:
            ds.TemporalPositionIdentifier = tpi
            ds.TriggerTime = f"{t * 1000.0:.1f}"
            if t > 0:
                ds.ContrastBolusAgent = contrast
            elif "ContrastBolusAgent" in ds:
                del ds.ContrastBolusAgent
        encoder = SliceEncoder(ds)
        for k in range(nz):
            inst = b * nz + int(perm[k]) + 1
            pos = origin + k * geom.slice_mm * n
            data = encoder.encode(uid(series_uid, "sop", inst), inst, [f"{c:.4f}" for c in pos],
                                  f"{float(np.dot(pos, n)):.4f}", np.ascontiguousarray(vol[k]).tobytes())
            (folder / f"1-{inst:03d}.dcm").write_bytes(data)
            count += 1
    return count


def _encode(elem: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem)
    return fp.getvalue()


#: Elements that change from slice to slice (everything else is encoded once per block).
_VARYING = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)


class SliceEncoder:
    """Encodes one slice's file with pydicom's element writer, re-encoding only the per-slice elements.

    The bytes equal ``Dataset.save_as(..., enforce_file_format=True)`` of the same dataset (a test
    checks this); it only avoids re-encoding ~80 constant elements for each of thousands of files.
    """

    def __init__(self, ds: Dataset) -> None:
        self.chunks: list[list[bytes]] = [[] for _ in range(len(_VARYING) + 1)]
        for elem in ds:
            if elem.tag in _VARYING:
                continue
            slot = sum(1 for t in _VARYING if t < elem.tag)
            self.chunks[slot].append(_encode(elem))
        self.joined = [b"".join(c) for c in self.chunks]
        self.meta_tail = _encode(DataElement(0x00020010, "UI", ExplicitVRLittleEndian)) + _encode(
            DataElement(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID)) + _encode(
            DataElement(0x00020013, "SH", f"PYDICOM {'.'.join(_PYDICOM_VERSION)}"))
        self.meta_head = _encode(DataElement(0x00020001, "OB", b"\x00\x01")) + _encode(
            DataElement(0x00020002, "UI", ds.SOPClassUID))

    def encode(self, sop_uid: str, instance: int, position: list[str], location: str, pixels: bytes) -> bytes:
        """Preamble + DICM + file meta + dataset bytes of one slice."""
        sop = _encode(DataElement(0x00020003, "UI", sop_uid))
        meta_body = self.meta_head + sop + self.meta_tail
        group_len = _encode(DataElement(0x00020000, "UL", len(meta_body)))
        varying = [
            _encode(DataElement(0x00080018, "UI", sop_uid)), _encode(DataElement(0x00200013, "IS", instance)),
            _encode(DataElement(0x00200032, "DS", position)), _encode(DataElement(0x00201041, "DS", location)),
            _encode(DataElement(0x7FE00010, "OW", pixels)),
        ]
        parts = [b"\x00" * 128, b"DICM", group_len, meta_body, self.joined[0]]
        for i, v in enumerate(varying):
            parts += [v, self.joined[i + 1]]
        return b"".join(parts)
