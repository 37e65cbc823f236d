"""SimpleITK volume steps: read a phase into an image with its DICOM geometry, bias-correct, and
resample onto the fixed-size isotropic output grid (reorientation + resampling + crop/pad in one step)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from common.preprocess.dicom_headers import DicomError
from common.preprocess.dicom_series import Phase

_INTERP = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def _syntax(ds: pydicom.Dataset) -> str:
    """The file's transfer syntax as 'name (UID)' for messages."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax (no file meta)"


def _decode(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """Stored pixel values (frames, rows, cols) as float32: uncompressed 16-bit read directly (fast path),
    everything else through pydicom's decoders (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle,
    pyjpegls). DicomError naming the file and the transfer syntax when no decoder can."""
    ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    signed = bool(ds.get("PixelRepresentation", 0))
    stored = int(ds.get("BitsStored", 16) or 16)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if ts is not None and not ts.is_compressed and ds.get("BitsAllocated") == 16 and \
                ds.get("SamplesPerPixel", 1) == 1 and (stored == 16 or not signed):
            dtype = np.dtype("<i2" if signed else "<u2")
            if not ts.is_little_endian:
                dtype = dtype.newbyteorder(">")
            n = int(ds.Rows) * int(ds.Columns) * frames
            raw = np.frombuffer(ds.PixelData, dtype=dtype)
            if raw.size < n:
                raise ValueError(f"PixelData holds {raw.size} values, expected {n}")
            raw = raw[:n] if stored == 16 else raw[:n] & np.uint16((1 << stored) - 1)  # unused high bits
            return raw.reshape(frames, int(ds.Rows), int(ds.Columns)).astype(np.float32)
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError(f"{path}: cannot decode pixel data in {_syntax(ds)} ({type(exc).__name__}: "
                         f"{exc})") from exc
    return arr.reshape(frames, int(ds.Rows), int(ds.Columns)).astype(np.float32)


def _rescale(arr: np.ndarray, item: object) -> np.ndarray:
    slope = float(getattr(item, "RescaleSlope", 1.0) or 1.0)
    inter = float(getattr(item, "RescaleIntercept", 0.0) or 0.0)
    return arr * slope + inter if (slope != 1.0 or inter != 0.0) else arr


def read_frames(path: str) -> np.ndarray:
    """All frames of one file (frames, rows, cols) as float32, Rescale Slope/Intercept applied (top-level,
    or per frame / shared in the Pixel Value Transformation functional group of an Enhanced MR)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise DicomError(f"{path}: missing pixel data (no PixelData element)")
    arr = _decode(ds, path)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        return _rescale(arr, ds)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    for k in range(arr.shape[0]):
        pvt = per_frame[k].get("PixelValueTransformationSequence") if k < len(per_frame) else None
        if pvt is None and shared is not None:
            pvt = shared.get("PixelValueTransformationSequence")
        if pvt:
            arr[k] = _rescale(arr[k], pvt[0])
    return arr


def read_pixels(path: str, frame: int | None = None) -> np.ndarray:
    """One slice's pixel values as float32 (frame ``frame`` of a multi-frame file), rescaled;
    DicomError naming the file (and the transfer syntax when it cannot be decoded)."""
    arr = read_frames(path)
    return arr[frame or 0]


def phase_image(phase: Phase) -> sitk.Image:
    """The phase as a float32 SimpleITK image: voxel (i, j, k) = (column, row, slice ordered along the
    normal); origin = first slice's ImagePositionPatient; direction = [row dir, column dir, normal].
    A multi-frame (Enhanced MR) file is decoded once for all its frames."""
    cache: dict[str, np.ndarray] = {}
    planes = []
    for s in phase.slices:
        if s.frame is None:
            planes.append(read_pixels(s.path))
            continue
        if s.path not in cache:
            cache[s.path] = read_frames(s.path)
        planes.append(cache[s.path][s.frame])
    arr = np.stack(planes)
    h = phase.slices[0]
    img = sitk.GetImageFromArray(arr)
    u, v = np.asarray(h.iop[:3]), np.asarray(h.iop[3:])
    n = np.cross(u, v)
    img.SetSpacing((float(h.pixel_spacing[1]), float(h.pixel_spacing[0]), float(phase.spacing_z)))
    img.SetOrigin(tuple(float(c) for c in h.ipp))
    img.SetDirection(tuple(float(c) for c in np.stack([u, v, n], axis=1).ravel()))
    return img


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 100)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def onto(img: sitk.Image, ref: sitk.Image, interpolator: str = "linear", default: float = 0.0) -> sitk.Image:
    """Resample ``img`` onto the grid of ``ref`` (physical space; identity transform)."""
    return sitk.Resample(img, ref, sitk.Transform(), _INTERP[interpolator], default, sitk.sitkFloat32)


def n4_field(pre: sitk.Image, mask: sitk.Image, shrink: int = 2, iterations: Sequence[int] = (20, 20, 10)
             ) -> sitk.Image:
    """N4 bias field (multiplicative, on the full-resolution grid of ``pre``) estimated on a shrunk copy."""
    factors = [shrink if s >= 4 * shrink else 1 for s in pre.GetSize()]
    small = sitk.Shrink(pre, factors)
    small_mask = sitk.Shrink(mask, factors)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations(list(iterations))
    f.Execute(small, small_mask)
    log_field = f.GetLogBiasFieldAsImage(pre)
    return sitk.Exp(log_field)


def output_grid(reference: sitk.Image, centre: Sequence[float], orientation: str, spacing_mm: float,
                shape_zyx: Sequence[int]) -> sitk.Image:
    """Empty image of the output grid: directions of ``reference`` reoriented to ``orientation``
    (SimpleITK DICOMOrient), isotropic ``spacing_mm``, size ``shape`` (z, y, x), centred on ``centre``."""
    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection(reference.GetDirection())
    d = np.asarray(sitk.DICOMOrient(probe, orientation).GetDirection()).reshape(3, 3)
    size = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]], dtype=int)
    origin = np.asarray(centre, dtype=float) - d @ ((size - 1) / 2.0 * spacing_mm)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(tuple(float(c) for c in d.ravel()))
    grid.SetOrigin(tuple(float(c) for c in origin))
    return grid


def box_centre(img: sitk.Image, box: Sequence[int]) -> tuple[float, float, float]:
    """Physical centre of a (z0, z1, y0, y1, x0, x1) 0-based inclusive voxel box of ``img``."""
    z0, z1, y0, y1, x0, x1 = box
    idx = ((x0 + x1) / 2.0, (y0 + y1) / 2.0, (z0 + z1) / 2.0)
    return tuple(img.TransformContinuousIndexToPhysicalPoint(idx))  # type: ignore[return-value]


def mask_centre(mask: sitk.Image) -> tuple[float, float, float]:
    """Physical centroid of a binary mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return tuple(stats.GetCentroid(1))  # type: ignore[return-value]


def to_array(img: sitk.Image) -> np.ndarray:
    """(z, y, x) float32 array of an image."""
    return sitk.GetArrayFromImage(img).astype(np.float32, copy=False)


def from_array(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    """Image from a (z, y, x) array with the geometry of ``like``."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    out.CopyInformation(like)
    return out


__all__ = ["box_centre", "from_array", "mask_centre", "n4_field", "onto", "output_grid", "phase_image",
           "read_frames", "read_pixels", "same_grid", "to_array"]
