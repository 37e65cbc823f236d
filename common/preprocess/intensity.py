"""Intensity standardisation applied identically at every site (rule documented in docs/preprocessing.md).

DCE rule: body mask = Otsu foreground of the smoothed pre-contrast phase (largest connected component,
holes filled). With lo, hi = the (P_lo, P_hi) percentiles of the pre-contrast body voxels, mean and sd
are those of the pre-contrast body voxels clipped to [lo, hi] (robust statistics). Every DCE phase gets
the SAME map z = (max(x, lo) - mean) / sd, then z is capped at ``Z_MAX`` (spikes, float16 safety).
The upper percentile bounds the statistics only: a tumour is well under 0.5 % of the body, so clipping
post-contrast values at P_hi would erase the contrast enhancement the model needs (sub = (post - pre)/sd).
T2 gets the same rule with its own mask and statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


#: Cap of standardised values (in sd units above the pre-contrast body mean).
Z_MAX = 30.0


@dataclass(frozen=True)
class Standardiser:
    """Clip bounds and z-score parameters of one patient (one modality)."""

    lo: float
    hi: float
    mean: float
    sd: float

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """(max(x, lo) - mean) / sd, capped at Z_MAX, as float32."""
        return np.minimum((np.maximum(arr, self.lo) - self.mean) / self.sd, Z_MAX).astype(np.float32)

    def value(self, x: float) -> float:
        """The standardised value of raw intensity ``x`` (e.g. the padding value for air)."""
        return float(min((max(x, self.lo) - self.mean) / self.sd, Z_MAX))


def body_mask(img: sitk.Image) -> sitk.Image:
    """Foreground (body) mask: Otsu threshold of a lightly smoothed image, largest component, holes filled."""
    sm = sitk.SmoothingRecursiveGaussian(sitk.Cast(img, sitk.sitkFloat32), float(min(img.GetSpacing())))
    mask = sitk.OtsuThreshold(sm, 0, 1, 128)
    cc = sitk.ConnectedComponent(mask)
    rel = sitk.RelabelComponent(cc, sortByObjectSize=True)
    largest = sitk.BinaryThreshold(rel, 1, 1, 1, 0)
    filled = sitk.BinaryFillhole(largest)
    if sitk.GetArrayViewFromImage(filled).sum() == 0:  # degenerate image: keep everything
        return sitk.Cast(img * 0 + 1, sitk.sitkUInt8)
    return sitk.Cast(filled, sitk.sitkUInt8)


def fit_standardiser(reference: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> Standardiser:
    """Fit the rule on the ``reference`` (pre-contrast) body voxels."""
    ref = reference[mask]
    if ref.size < 10:
        raise ValueError(f"body mask holds only {ref.size} voxels")
    lo, hi = (float(v) for v in np.percentile(ref, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    clipped = np.clip(ref, lo, hi)
    sd = float(clipped.std())
    return Standardiser(lo=lo, hi=hi, mean=float(clipped.mean()), sd=sd if sd > 1e-6 else 1.0)


__all__ = ["Standardiser", "body_mask", "fit_standardiser"]
