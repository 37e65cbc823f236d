"""Small real DICOM MR series for the prepare tests (pydicom), from a phantom defined in patient space.

The phantom (an ellipsoidal body with an enhancing spherical tumour) is defined in physical LPS
millimetres, so the same patient can be written axially or sagittally and both must come out alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

BODY_SEMI_AXES = (70.0, 45.0, 34.0)  # x, y, z mm
TUMOUR_CENTRE = (25.0, -12.0, 6.0)  # mm, off-centre so flips/permutations show
TUMOUR_RADIUS = 9.0
#: Relative enhancement of tumour and body per phase (index 0 = pre-contrast).
TUMOUR_ENH = (0.0, 1.5, 1.3, 1.1, 1.0)
BODY_ENH = (0.0, 0.15, 0.18, 0.2, 0.21)


@dataclass(frozen=True)
class Grid:
    """Acquisition grid: view, matrix (slices, rows, cols) and spacing (slice, pixel) in mm."""

    view: str = "axial"
    slices: int = 20
    rows: int = 40
    cols: int = 56
    slice_mm: float = 4.0
    pixel_mm: float = 2.8

    def frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(origin, u, v, n) centred on (0, 0, 0); axial IOP (1,0,0,0,1,0), sagittal (0,1,0,0,0,-1)."""
        if self.view == "sagittal":
            u, v = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
        else:
            u, v = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        n = np.cross(u, v)
        origin = -((self.cols - 1) / 2 * self.pixel_mm * u + (self.rows - 1) / 2 * self.pixel_mm * v
                   + (self.slices - 1) / 2 * self.slice_mm * n)
        return origin, u, v, n

    def coords(self) -> np.ndarray:
        """Physical coordinates (3, slices, rows, cols) of every voxel, slice k at origin + k * dz * n."""
        origin, u, v, n = self.frame()
        k = np.arange(self.slices)[:, None, None] * self.slice_mm
        j = np.arange(self.rows)[None, :, None] * self.pixel_mm
        i = np.arange(self.cols)[None, None, :] * self.pixel_mm
        return np.stack([origin[a] + i * u[a] + j * v[a] + k * n[a] for a in range(3)])


def phantom(grid: Grid, n_phases: int, seed: int = 0) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Stored uint16 volumes (slices, rows, cols) per phase and the tumour box (z0,z1,y0,y1,x0,x1), 0-based."""
    x, y, z = grid.coords()
    a, b, c = BODY_SEMI_AXES
    body = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0
    tx, ty, tz = TUMOUR_CENTRE
    tum = (x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= TUMOUR_RADIUS ** 2
    rng = np.random.default_rng(seed)
    base = np.where(body, 300.0 + 40.0 * np.sin(x / 15.0), 8.0)
    vols = []
    for p in range(n_phases):
        img = base * (1.0 + BODY_ENH[p] * body) + np.where(tum, 250.0 * (1.0 + TUMOUR_ENH[p]), 0.0)
        img = img + rng.normal(0.0, 6.0, img.shape)
        vols.append(np.clip(img, 0, 4000).astype(np.uint16))
    zz, yy, xx = np.nonzero(tum)
    box = (int(zz.min()), int(zz.max()), int(yy.min()), int(yy.max()), int(xx.min()), int(xx.max()))
    return vols, box


def uid(*parts: object) -> str:
    """Deterministic UID 2.25.<int of sha256(parts)> (pydicom's generate_uid ignores entropy with prefix=None)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(digest[:30], 16)}"


def _dataset(pid: str, study_uid: str, series_uid: str, desc: str, number: int, grid: Grid, study_date: str,
             modality: str = "MR") -> Dataset:
    origin, u, v, n = grid.frame()
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.Modality = modality
    ds.PatientID = pid
    ds.PatientName = "FAKE^TEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = ds.SeriesDate = study_date
    ds.StudyTime = "080000"
    ds.SeriesDescription = desc
    ds.SeriesNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "TestScanner"
    ds.MagneticFieldStrength = "3"
    ds.RepetitionTime = "4.5"
    ds.EchoTime = "1.8"
    ds.SliceThickness = f"{grid.slice_mm:g}"
    ds.ImageOrientationPatient = [f"{c:g}" for c in (*u, *v)]
    ds.FrameOfReferenceUID = uid(study_uid, "for")
    ds.Rows, ds.Columns = grid.rows, grid.cols
    ds.PixelSpacing = [f"{grid.pixel_mm:g}", f"{grid.pixel_mm:g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _tm(seconds: float) -> str:
    """DICOM TM of a time of day (wraps past midnight: 24:01:00 -> 000100)."""
    h, rem = divmod(int(seconds) % 86400, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}{m:02d}{s:02d}"


def write_series(folder: Path, pid: str, study_uid: str, series_uid: str, desc: str, number: int, grid: Grid,
                 blocks: list[tuple[np.ndarray, float, int]], study_date: str = "20200101",
                 names: str = "ordered", rng: np.random.Generator | None = None, modality: str = "MR",
                 timing_tags: bool = True, extra: dict | None = None) -> list[Path]:
    """Write one series, ``blocks`` = [(volume, seconds after 08:00, TemporalPositionIdentifier)].

    ``names``: ``ordered`` (1-001.dcm..), ``shuffled`` (random hex names, InstanceNumber shuffled too).
    ``extra``: header keywords set on every file (ImageType, EchoTime, RepetitionTime ...).
    """
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ds = _dataset(pid, study_uid, series_uid, desc, number, grid, study_date, modality)
    for kw, value in (extra or {}).items():
        setattr(ds, kw, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    origin, _, _, n = grid.frame()
    out = []
    perm = rng.permutation(grid.slices) if names == "shuffled" else np.arange(grid.slices)
    for b, (vol, t, tpi) in enumerate(blocks):
        if timing_tags:
            ds.AcquisitionTime = ds.ContentTime = _tm(8 * 3600 + t)
            ds.TemporalPositionIdentifier = tpi
            ds.TriggerTime = f"{t * 1000:.0f}"
        if t > 0:
            ds.ContrastBolusAgent = "GADOVIST"
        elif "ContrastBolusAgent" in ds:
            del ds.ContrastBolusAgent
        for k in range(grid.slices):
            inst = b * grid.slices + int(perm[k]) + 1
            sop = uid(series_uid, inst)
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = inst
            ds.ImagePositionPatient = [f"{c:.4f}" for c in origin + k * grid.slice_mm * n]
            ds.PixelData = np.ascontiguousarray(vol[k]).tobytes()
            name = f"{rng.integers(0, 2**40):010x}.dcm" if names == "shuffled" else f"1-{inst:03d}.dcm"
            path = folder / name
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
    return out


DUKE_DESCS = ("ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass", "ax dyn 4th pass")


def write_patient(root: Path, pid: str, *, layout: str = "duke", grid: Grid = Grid(), times: tuple = (0, 90, 180),
                  study_date: str = "20200101", flat: bool = False, names: str = "ordered", seed: int = 0,
                  descs: tuple[str, ...] = DUKE_DESCS, skip_phases: tuple[int, ...] = (), tag: str = "v0"
                  ) -> dict:
    """Write one patient's DCE (Duke: one series per phase; ispy: one series, all phases).

    ``flat``: every file of the patient in ``root`` itself (PACS export). Returns box, series uids, files.
    """
    vols, box = phantom(grid, len(times), seed)
    rng = np.random.default_rng(seed)
    study = uid(pid, tag, "study")
    base = root if flat else root / pid / f"{study_date}-study-{tag}"
    files: dict[str, list[Path]] = {}
    if layout == "duke":
        for p, (vol, t) in enumerate(zip(vols, times)):
            if p in skip_phases:
                continue
            s = uid(pid, tag, "series", p)
            folder = base if flat else base / f"{p + 3}.000000-{descs[p].replace('/', '')}"
            files[s] = write_series(folder, pid, study, s, descs[p], p + 3, grid, [(vol, t, 1)], study_date, names,
                                    rng)
    else:
        s = uid(pid, tag, "series", "dce")
        folder = base if flat else base / "600.000000-DCE"
        blocks = [(v, t, p + 1) for p, (v, t) in enumerate(zip(vols, times)) if p not in skip_phases]
        files[s] = write_series(folder, pid, study, s, "Dynamic-3dfgre", 600, grid, blocks, study_date, names, rng)
    return {"box": box, "files": files, "study": study}


def write_boxes(path: Path, boxes: dict[str, tuple[int, ...]]) -> None:
    """Duke Annotation_Boxes.xlsx (1-based inclusive) from 0-based (z0,z1,y0,y1,x0,x1) boxes."""
    rows = [{"Patient ID": p, "Start Row": b[2] + 1, "End Row": b[3] + 1, "Start Column": b[4] + 1,
             "End Column": b[5] + 1, "Start Slice": b[0] + 1, "End Slice": b[1] + 1} for p, b in boxes.items()]
    pd.DataFrame(rows).to_excel(path, index=False)


MAPPING_YAML = """columns:
  patient_id: ID
  pcr: response
  age: Age
values:
  pcr: {yes: 1, no: 0}
"""


def write_clinical(path: Path, labels: dict[str, object]) -> Path:
    """A hospital CSV (ID, response yes/no, Age) and its YAML mapping next to it; returns the mapping path."""
    pd.DataFrame({"ID": list(labels), "response": [labels[p] for p in labels],
                  "Age": [50] * len(labels)}).to_csv(path, index=False)
    mp = path.with_suffix(".yaml")
    mp.write_text(MAPPING_YAML)
    return mp


# ----------------------------------------------------------------------------- PACS transfer syntaxes

def _encode_jpeg_lossless(arr: np.ndarray) -> bytes:
    """One 2-D frame as a JPEG Lossless Process 14 SV1 codestream (GDCM's encoder through SimpleITK)."""
    import tempfile

    import pydicom
    import SimpleITK as sitk
    from pydicom.encaps import generate_frames

    with tempfile.TemporaryDirectory() as tmp:
        w = sitk.ImageFileWriter()
        w.SetFileName(f"{tmp}/f.dcm")
        w.SetUseCompression(True)
        w.SetCompressor("JPEG")
        w.Execute(sitk.GetImageFromArray(arr[None].astype(np.uint16)))
        ds = pydicom.dcmread(f"{tmp}/f.dcm")
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70", ds.file_meta.TransferSyntaxUID
        return next(generate_frames(ds.PixelData, number_of_frames=1))


def _encode_jpeg_baseline(arr: np.ndarray) -> bytes:
    """One 8-bit frame as a JPEG Baseline codestream (Pillow's libjpeg encoder, quality 95)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def transcode(path: Path, syntax: str) -> None:
    """Rewrite one of our uncompressed MR files in place in ``syntax``: a pydicom UID name (RLELossless,
    JPEGLSLossless, JPEG2000Lossless, JPEG2000, JPEGLSNearLossless: pydicom's encoders with the installed
    plugins), JPEGLosslessSV1 (GDCM), JPEGBaseline8Bit (Pillow; the data is scaled to 8 bits first),
    DeflatedExplicitVRLittleEndian or ExplicitVRBigEndian."""
    import pydicom
    from pydicom import uid as U
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if syntax in ("RLELossless", "JPEGLSLossless", "JPEG2000Lossless"):
        ds.compress(getattr(U, syntax))
    elif syntax in ("JPEG2000", "JPEGLSNearLossless"):
        kw = {"j2k_psnr": [60]} if syntax == "JPEG2000" else {"jls_error": 2}
        ds.compress(getattr(U, syntax), **kw)
    elif syntax == "JPEGLosslessSV1":
        ds.PixelData = encapsulate([_encode_jpeg_lossless(arr)])
        ds["PixelData"].VR = "OB"
        ds.BitsStored, ds.HighBit = 16, 15
        ds.file_meta.TransferSyntaxUID = U.JPEGLosslessSV1
    elif syntax == "JPEGBaseline8Bit":
        ds.PixelData = encapsulate([_encode_jpeg_baseline(arr // 16)])
        ds["PixelData"].VR = "OB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.file_meta.TransferSyntaxUID = U.JPEGBaseline8Bit
    elif syntax == "DeflatedExplicitVRLittleEndian":
        ds.file_meta.TransferSyntaxUID = U.DeflatedExplicitVRLittleEndian
    elif syntax == "ExplicitVRBigEndian":
        ds.PixelData = arr.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = U.ExplicitVRBigEndian
        pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
        return
    else:
        raise ValueError(f"unknown syntax {syntax}")
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------- Enhanced MR (multi-frame)

def write_enhanced(folder: Path, pid: str, grid: Grid = Grid(), times: tuple = (0, 90, 180), *, mode: str = "tpi",
                   seed: int = 0, study_date: str = "20200101", desc: str = "DCE enhanced") -> dict:
    """One patient's DCE as Enhanced MR Image Storage: geometry in the Plane Position (per frame) and
    Plane Orientation / Pixel Measures (shared) functional groups; timing in Frame Content.

    ``mode``: ``tpi`` one file, all phases, TemporalPositionIndex + FrameAcquisitionDateTime;
    ``datetime`` one file, FrameAcquisitionDateTime only (frames shuffled); ``files`` one file per phase
    (same series), FrameAcquisitionDateTime only. Returns box, volumes, files, series uid.
    """
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    vols, box = phantom(grid, len(times), seed)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = uid(pid, "enh", "study"), uid(pid, "enh", "series")
    origin, u, v, n = grid.frame()
    frames = [(p, k) for p in range(len(times)) for k in range(grid.slices)]
    groups = [frames] if mode != "files" else [[f for f in frames if f[0] == p] for p in range(len(times))]
    files = []
    for g, group in enumerate(groups):
        if mode == "datetime":
            group = [group[i] for i in rng.permutation(len(group))]
        ds = _dataset(pid, study, series, desc, 700, grid, study_date)
        ds.SOPClassUID = EnhancedMRImageStorage
        for kw in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RepetitionTime", "EchoTime"):
            del ds[kw]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.NumberOfFrames = len(group)
        shared = Dataset()
        po, pm, mt, me = Dataset(), Dataset(), Dataset(), Dataset()
        po.ImageOrientationPatient = [f"{c:g}" for c in (*u, *v)]
        pm.PixelSpacing = [f"{grid.pixel_mm:g}", f"{grid.pixel_mm:g}"]
        pm.SliceThickness = f"{grid.slice_mm:g}"
        mt.RepetitionTime, me.EffectiveEchoTime = 4.5, 1.8
        shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([po]), Sequence([pm])
        shared.MRTimingAndRelatedParametersSequence, shared.MREchoSequence = Sequence([mt]), Sequence([me])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per = []
        for p, k in group:
            fg, pp, fc, cb = Dataset(), Dataset(), Dataset(), Dataset()
            pp.ImagePositionPatient = [f"{c:.4f}" for c in origin + k * grid.slice_mm * n]
            fc.FrameAcquisitionDateTime = f"{study_date}{_tm(8 * 3600 + times[p])}.000000"
            if mode == "tpi":
                fc.TemporalPositionIndex = p + 1
            cb.ContrastBolusAgentNumber = 1
            cb.ContrastBolusAgentAdministered = "YES" if times[p] > 0 else "NO"
            fg.PlanePositionSequence, fg.FrameContentSequence = Sequence([pp]), Sequence([fc])
            fg.ContrastBolusUsageSequence = Sequence([cb])
            per.append(fg)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per)
        ds.PixelData = np.stack([vols[p][k] for p, k in group]).astype("<u2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = uid(series, g)
        ds.InstanceNumber = g + 1
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"enh-{g}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return {"box": box, "vols": vols, "files": files, "series": series}
