"""Braman et al. semi-quantitative kinetic features from the native DCE phases (the kinetic baseline).

Percent enhancement PE_t = 100 (S_t - S_0) / S_0 per voxel. Enhancing voxels = voxels of the region
(tumour box, or whole-body mask when no box) whose early PE (first post-contrast phase) is at least
``threshold_pe``; if fewer than ``min_voxels`` qualify, the top ``fallback_fraction`` of the region by
early PE. Features come from the mean signal curve of the enhancing voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.site_cache import KINETIC_FEATURES as KINETIC_COLUMNS  # the kinetics.csv feature columns


@dataclass(frozen=True)
class KineticConfig:
    """Enhancing-voxel rule (defaults from the common 50 % early-enhancement convention)."""

    threshold_pe: float = 50.0
    min_voxels: int = 5
    fallback_fraction: float = 0.1


def kinetic_features(phases: list[np.ndarray], times_s: list[float], region: np.ndarray | None = None,
                     cfg: KineticConfig = KineticConfig()) -> dict[str, float]:
    """Features of the enhancing voxels of ``region`` (bool (z,y,x); None = all) over phases (z,y,x) at
    ``times_s`` (seconds after the pre-contrast phase)."""
    if len(phases) < 2:
        raise ValueError("kinetic features need a pre-contrast and at least one post-contrast phase")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in phases])  # (T, z, y, x)
    region = np.ones(stack.shape[1:], bool) if region is None else region
    region = region & (stack[0] > 0)
    if region.sum() == 0:
        raise ValueError("kinetic region holds no voxel with positive pre-contrast signal")
    s0 = stack[0][region]
    curves = stack[:, region]  # (T, n)
    early = 100.0 * (curves[1] - s0) / s0
    enh = early >= cfg.threshold_pe
    if enh.sum() < cfg.min_voxels:
        k = max(1, int(np.ceil(cfg.fallback_fraction * early.size)))
        enh = np.zeros_like(enh)
        enh[np.argsort(early)[-k:]] = True
    s = curves[:, enh].mean(axis=1)  # mean signal curve
    t = np.asarray(times_s, dtype=np.float64)
    pe = 100.0 * (s - s[0]) / s[0]
    peak = int(np.argmax(pe))
    late = pe[-1]
    denom = s[-1] - s[0]
    ser = float((s[1] - s[0]) / denom) if abs(denom) > 1e-9 else float("nan")
    washout = float((pe[peak] - late) / (t[-1] - t[peak])) if peak < len(t) - 1 and t[-1] > t[peak] else 0.0
    return {
        "time_to_peak": float(t[peak] - t[0]),
        "max_pe": float(pe[peak]),
        "early_pe": float(pe[1]),
        "late_pe": float(late),
        "ser": ser,
        "uptake_rate": float(pe[1] / (t[1] - t[0])) if t[1] > t[0] else float("nan"),
        "washout_rate": washout,
        "n_enhancing": int(enh.sum()),
    }


__all__ = ["KINETIC_COLUMNS", "KineticConfig", "kinetic_features"]
