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


def read_pixels(path: str) -> np.ndarray:
    """One slice's pixel values as float32, RescaleSlope/Intercept applied; DicomError naming the file."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise DicomError(f"{path}: missing pixel data (no PixelData element)")
    try:
        ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
        signed = bool(ds.get("PixelRepresentation", 0))
        stored = int(ds.get("BitsStored", 16) or 16)
        if ts is not None and not ts.is_compressed and ds.get("BitsAllocated") == 16 and \
                ds.get("SamplesPerPixel", 1) == 1 and (stored == 16 or not signed):
            dtype = np.dtype("<i2" if signed else "<u2")
            if not ts.is_little_endian:
                dtype = dtype.newbyteorder(">")
            n = int(ds.Rows) * int(ds.Columns)
            raw = np.frombuffer(ds.PixelData, dtype=dtype)
            if raw.size < n:
                raise ValueError(f"PixelData holds {raw.size} values, expected {n}")
            raw = raw[:n] if stored == 16 else raw[:n] & np.uint16((1 << stored) - 1)  # unused high bits
            arr = raw.reshape(int(ds.Rows), int(ds.Columns)).astype(np.float32)
        else:
            arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or inter != 0.0:
        arr = arr * slope + inter
    return arr


def phase_image(phase: Phase) -> sitk.Image:
    """The phase as a float32 SimpleITK image: voxel (i, j, k) = (column, row, slice ordered along the
    normal); origin = first slice's ImagePositionPatient; direction = [row dir, column dir, normal]."""
    arr = np.stack([read_pixels(p) for p in phase.files])
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
           "read_pixels", "same_grid", "to_array"]
