"""Tumour box of one patient in its pre-contrast voxel grid ``(z0, z1, y0, y1, x0, x1)``, 0-based inclusive:
from its annotation (box table, NIfTI mask, DICOM-SEG) or, without one, found automatically.

Automatic localisation (``AUTO_METHOD`` = "enhancement-v1"): the early relative enhancement
``(post1 - pre) / pre`` smoothed (sigma 2 mm), inside the body mask shrunk by 5 mm (skin and the body edge
enhance and move); voxels above ``median + FRACTION * (peak - median)`` of that map form candidate lesions
(26-connected); the one holding the highest enhancement is the tumour, its extent the box. Agreement with
the known boxes of the embedded cohort: ``benchmarks/bench_localise.py`` (docs/preprocessing.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage

from common.preprocess.annotations import Annotation
from common.preprocess.boxes import Box
from common.config import AUTO_LOCALISATION as AUTO_METHOD, LOCALISATIONS



def _box_of_points(img: sitk.Image, pts: np.ndarray, what: str) -> Box:
    """Voxel box (z0,z1,y0,y1,x0,x1) in ``img`` of physical points (N, 3), clipped to the image."""
    if len(pts) == 0:
        raise ValueError(f"{what}: empty mask (no voxel > 0)")
    origin = np.asarray(img.GetOrigin())
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    idx = (np.linalg.inv(d) @ (pts - origin).T).T / np.asarray(img.GetSpacing())  # (x, y, z) continuous
    lo, hi = np.floor(idx.min(0) + 0.5).astype(int), np.floor(idx.max(0) + 0.5).astype(int)
    size = np.asarray(img.GetSize())
    if np.any(hi < 0) or np.any(lo >= size):
        raise ValueError(f"{what}: the mask lies outside the pre-contrast series")
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    return int(lo[2]), int(hi[2]), int(lo[1]), int(hi[1]), int(lo[0]), int(hi[0])


def _nifti_points(path: str) -> np.ndarray:
    """Physical LPS points of the voxels > 0 of a NIfTI mask (SimpleITK converts RAS to LPS)."""
    img = sitk.ReadImage(path)
    arr = sitk.GetArrayViewFromImage(img)
    zyx = np.argwhere(arr > 0)
    if len(zyx) == 0:
        return np.zeros((0, 3))
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    ijk = zyx[:, ::-1] * np.asarray(img.GetSpacing())
    return np.asarray(img.GetOrigin()) + ijk @ d.T


def _seg_points(path: str) -> np.ndarray:
    """Physical points of the segmented pixels of a DICOM-SEG (all segments; frames placed by their Plane
    Position, orientation and spacing from the shared or per-frame functional groups)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    pts = []
    for k, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        rc = np.argwhere(frames[k] > 0)
        if len(rc) == 0:
            continue
        po = (fg.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0].ImageOrientationPatient
        pm = (fg.get("PixelMeasuresSequence") or shared.PixelMeasuresSequence)[0].PixelSpacing
        ipp = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
        u, v = np.asarray(po[:3], float), np.asarray(po[3:], float)
        pts.append(ipp + np.outer(rc[:, 1] * float(pm[1]), u) + np.outer(rc[:, 0] * float(pm[0]), v))
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def annotation_box(pid: str, ann: Annotation, pre: sitk.Image) -> Box:
    """The annotation as a box in the pre-contrast grid; ValueError naming the file when unusable."""
    if ann.kind == "box":
        assert ann.box is not None
        return ann.box
    try:
        pts = _nifti_points(ann.source) if ann.kind == "nifti" else _seg_points(ann.source)
    except Exception as exc:
        raise ValueError(f"patient {pid}: cannot read tumour mask {ann.source} ({type(exc).__name__}: {exc})") \
            from exc
    return _box_of_points(pre, pts, f"patient {pid}: tumour mask {ann.source}")


#: Candidate threshold between the median and the peak of the enhancement map (0.25/0.40/0.55 measured:
#: 0.25 best, docs/preprocessing.md).
FRACTION = 0.25


def auto_box(pre: sitk.Image, arrays: list[np.ndarray], body: np.ndarray) -> Box:
    """Automatic tumour box from the early enhancement inside the (shrunk) body mask (see module doc)."""
    sp = np.asarray(pre.GetSpacing())[::-1]  # z, y, x mm
    a0, a1 = (ndimage.gaussian_filter(a.astype(np.float32), sigma=2.0 / sp) for a in (arrays[0], arrays[1]))
    floor = max(float(np.percentile(a0[body], 50)) * 0.2, 1e-3) if body.any() else 1.0
    rel = (a1 - a0) / np.maximum(a0, floor)
    inner = ndimage.binary_erosion(body, structure=_ball(5.0, sp))
    if inner.sum() < 100:  # tiny or empty body mask: use it whole (or the whole image)
        inner = body if body.sum() >= 100 else np.ones(body.shape, bool)
    vals = rel[inner]
    base, peak = float(np.median(vals)), float(vals.max())
    cand = inner & (rel > base + FRACTION * (peak - base))  # candidate lesions
    labels, n = ndimage.label(cand, structure=np.ones((3, 3, 3)))
    if n == 0 or peak <= base:
        zz, yy, xx = np.nonzero(inner)
        c = (int(np.median(zz)), int(np.median(yy)), int(np.median(xx)))
        return c[0], c[0], c[1], c[1], c[2], c[2]
    score = ndimage.maximum(rel, labels, index=np.arange(1, n + 1))  # the most enhancing focus wins
    best = int(np.argmax(score)) + 1
    zz, yy, xx = np.nonzero(labels == best)
    return int(zz.min()), int(zz.max()), int(yy.min()), int(yy.max()), int(xx.min()), int(xx.max())


def _ball(radius_mm: float, sp: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_mm / sp).astype(int), 1)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * sp[0]) ** 2 + (yy * sp[1]) ** 2 + (xx * sp[2]) ** 2 <= radius_mm ** 2


def locate(pid: str, method: str, ann: Annotation | None, pre: sitk.Image, arrays: list[np.ndarray],
           body: np.ndarray) -> tuple[Box, str]:
    """(box, source) for one patient under ``method`` (``LOCALISATIONS``); source names the file or
    ``auto:<AUTO_METHOD>``. ValueError when ``method='annotation'`` and there is none."""
    if method not in LOCALISATIONS:
        raise ValueError(f"PrepConfig.localisation must be one of {LOCALISATIONS}, got {method!r}")
    if ann is not None and method != "auto":
        return annotation_box(pid, ann, pre), f"{ann.kind}:{ann.source}"
    if method == "annotation":
        raise ValueError(f"patient {pid}: localisation='annotation' but no tumour box or mask for this patient")
    return auto_box(pre, arrays, body), f"auto:{AUTO_METHOD}"


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two inclusive voxel boxes (z0,z1,y0,y1,x0,x1)."""
    inter, va, vb = 1, 1, 1
    for k in range(0, 6, 2):
        lo, hi = max(a[k], b[k]), min(a[k + 1], b[k + 1])
        inter *= max(0, hi - lo + 1)
        va *= a[k + 1] - a[k] + 1
        vb *= b[k + 1] - b[k] + 1
    return inter / float(va + vb - inter)


__all__ = ["AUTO_METHOD", "LOCALISATIONS", "annotation_box", "auto_box", "box_iou", "locate"]
