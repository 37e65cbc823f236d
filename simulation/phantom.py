"""Breast DCE-MRI phantom: anatomy and a tumour whose kinetics carry the pCR label (generative model).

The phantom is defined in patient coordinates (DICOM LPS, mm: +x left, +y posterior, +z superior;
chest wall at y = 0, breasts anterior at y < 0) and sampled on each acquisition grid (axial or
sagittal, any spacing), so geometry metadata and image content always agree.
See docs/cohort.md for the model and its one strength knob ``signal``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from simulation.cohort_sites import Anchor, Geometry

#: Separation (in SD of the latent responsiveness) between pCR and non-pCR patients at signal = 1.
RESPONSIVENESS_SHIFT = 1.6

#: Pre-contrast T1 (fat-suppressed) tissue intensities, arbitrary units before scanner gain.
T1_PRE = {"air": 0.0, "fat": 90.0, "fgt": 330.0, "muscle": 260.0, "thorax": 210.0, "tumour": 300.0}
#: T2-weighted intensities (no fat suppression).
T2_INT = {"air": 0.0, "fat": 520.0, "fgt": 260.0, "muscle": 180.0, "thorax": 330.0, "tumour": 420.0}


@dataclass
class Phenotype:
    """Per-patient generative parameters (all drawn from the label, subtype and noise; see docs)."""

    responsiveness: float  # latent r; carries pCR when signal > 0
    diameter_mm: float
    peak_enhancement: float  # amplitude A of relative enhancement
    wash_in_s: float  # time constant of wash-in (s)
    washout_per_s: float  # k_out (>0 washout, ~0 plateau, <0 persistent)
    curve_type: str  # persistent | plateau | washout
    rim: float  # 0 = homogeneous enhancement, 1 = enhancing rim with dark core
    heterogeneity: float  # SD of the multiplicative enhancement texture
    lobulation: float
    early_visit_shrink: float  # diameter ratio at the early-treatment visit
    t2_factor: float  # tumour T2 intensity multiplier
    side: str  # L | R
    centre_mm: tuple[float, float, float]  # tumour centre (LPS)


@dataclass
class Anatomy:
    """Breast anatomy of one patient (LPS mm) and background enhancement."""

    breast_r: tuple[float, float, float]  # semi-axes x, y (anterior projection), z
    breast_dx: float  # |x| of each breast centre
    density: float  # fraction of fibroglandular tissue
    bpe: float  # background parenchymal enhancement amplitude


@dataclass
class Nuisance:
    """Scanner/site effects applied on top of the anatomy: gain, offset, bias field, noise."""

    gain: float
    offset: float
    bias_amp: float
    bias_coef: tuple[float, ...]
    noise_sigma: float
    bits_stored: int
    rescale_slope: float


def draw_phenotype(anchor: Anchor, signal: float, rng: np.random.Generator, anatomy: Anatomy) -> Phenotype:
    """Latent responsiveness r = signal*SHIFT*(pcr-1/2) + N(0,1) drives kinetics, rim, texture, shrinkage.

    Subtype effects are multiplied by ``signal`` too, so at signal 0 the image is independent of
    label and clinical variables (only the site/scanner differs).
    """
    r = signal * RESPONSIVENESS_SHIFT * (anchor.pcr - 0.5) + rng.normal()
    sub = anchor.subtype or "luminal"
    tn = 1.0 if sub == "triple_negative" else 0.0
    her2 = 1.0 if sub in ("her2_pure", "luminal_her2") else 0.0
    peak = 1.1 * math.exp(0.28 * r + signal * (0.10 * tn + 0.12 * her2) + 0.08 * rng.normal())
    wash_in = 75.0 * math.exp(-0.25 * r + 0.1 * rng.normal())
    k_out = 0.00035 + 0.00045 * r + signal * 0.0002 * her2 + 0.00015 * rng.normal()
    curve = "washout" if k_out > 0.0003 else ("plateau" if k_out > -0.0001 else "persistent")
    rim = float(np.clip(0.3 - 0.22 * r + signal * 0.25 * tn + 0.08 * rng.normal(), 0.0, 0.9))
    het = float(np.clip(0.22 - 0.08 * r + 0.04 * rng.normal(), 0.04, 0.6))
    diameter = float(np.clip(math.exp(math.log(24.0) + 0.3 * rng.normal() + signal * 0.1 * tn), 10.0, 42.0))
    lob = float(np.clip(0.12 - 0.05 * r + 0.04 * rng.normal(), 0.0, 0.35))
    shrink = float(np.clip(0.82 - 0.11 * r + 0.05 * rng.normal(), 0.3, 1.05))
    t2f = float(np.clip(1.0 + 0.08 * r + 0.05 * rng.normal(), 0.7, 1.4))
    side = "L" if rng.random() < 0.5 else "R"
    sx = 1.0 if side == "L" else -1.0
    rx, ry, rz = anatomy.breast_r
    rad = diameter / 2.0
    # centre inside the breast, at least one radius from its surface and from the chest wall
    cx = sx * anatomy.breast_dx + rng.uniform(-0.45, 0.45) * max(rx - rad, 5.0)
    cy = -rng.uniform(max(rad + 8.0, 0.25 * ry), max(rad + 9.0, 0.6 * ry))
    cz = rng.uniform(-0.4, 0.4) * max(rz - rad, 5.0)
    return Phenotype(float(r), diameter, float(peak), float(wash_in), float(k_out), curve, rim, het, lob, shrink,
                     t2f, side, (float(cx), float(cy), float(cz)))


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Breast size, position, density and background enhancement of one patient."""
    return Anatomy(
        breast_r=(float(rng.uniform(58, 72)), float(rng.uniform(60, 88)), float(rng.uniform(52, 66))),
        breast_dx=float(rng.uniform(80, 92)), density=float(rng.uniform(0.15, 0.5)), bpe=float(rng.uniform(0.05, 0.35)),
    )


def enhancement(t: float, amp: float, wash_in_s: float, k_out: float) -> float:
    """Relative enhancement at time ``t`` (s): amp * (1 - exp(-t/tau)) * exp(-k_out * t)."""
    return amp * (1.0 - math.exp(-t / wash_in_s)) * math.exp(-k_out * t) if t > 0 else 0.0


def frame(geom: Geometry, centre: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(origin, u, v, n): first voxel position and unit row/column/slice directions of the grid.

    Axial: IOP (1,0,0, 0,1,0), slices along +z. Sagittal: IOP (0,1,0, 0,0,-1), slices along -x.
    """
    if geom.view == "sagittal":
        u, v = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    else:
        u, v = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    n = np.cross(u, v)
    c = np.asarray(centre, dtype=float)
    origin = (c - (geom.cols - 1) / 2 * geom.pixel_mm * u - (geom.rows - 1) / 2 * geom.pixel_mm * v
              - (geom.slices - 1) / 2 * geom.slice_mm * n)
    return origin, u, v, n


def fov_centre(geom: Geometry, anatomy: Anatomy, side: str) -> tuple[float, float, float]:
    """Axial: bilateral FOV centred between the breasts; sagittal: unilateral, centred on the tumour breast."""
    if geom.view == "sagittal":
        return ((1.0 if side == "L" else -1.0) * anatomy.breast_dx, -30.0, 0.0)
    return (0.0, -25.0, 0.0)


def _coords(geom: Geometry, origin: np.ndarray, u: np.ndarray, v: np.ndarray, n: np.ndarray) -> list[np.ndarray]:
    k = np.arange(geom.slices, dtype=np.float32)[:, None, None] * geom.slice_mm
    j = np.arange(geom.rows, dtype=np.float32)[None, :, None] * geom.pixel_mm
    i = np.arange(geom.cols, dtype=np.float32)[None, None, :] * geom.pixel_mm
    return [(origin[a] + i * u[a] + j * v[a] + k * n[a]).astype(np.float32) for a in range(3)]


def _smooth_noise(shape: tuple[int, int, int], sigma_mm: float, spacing: tuple[float, float, float],
                  rng: np.random.Generator) -> np.ndarray:
    field = rng.standard_normal(shape, dtype=np.float32)
    out = gaussian_filter(field, [sigma_mm / s for s in spacing], mode="nearest")
    return out / (out.std() + 1e-6)


def render(geom: Geometry, origin: np.ndarray, u: np.ndarray, v: np.ndarray, n: np.ndarray, anatomy: Anatomy,
           pheno: Phenotype, times: list[int], nuisance: Nuisance, rng: np.random.Generator,
           diameter_scale: float = 1.0, t2: bool = False
           ) -> tuple[list[np.ndarray], np.ndarray | None, tuple[int, ...]]:
    """Sample the phantom on a grid: stored-value arrays (z, y, x) per phase, optional T2, tumour box.

    The box is (z0, z1, y0, y1, x0, x1), 0-based inclusive voxel indices of the tumour mask.
    """
    x, y, z = _coords(geom, origin, u, v, n)
    shape = (geom.slices, geom.rows, geom.cols)
    spacing = (geom.slice_mm, geom.pixel_mm, geom.pixel_mm)
    rx, ry, rz = anatomy.breast_r
    thorax = ((x / 175.0) ** 2 + ((y - 105.0) / 105.0) ** 2 <= 1.0) & (y >= 0)
    muscle = thorax & (y < 16.0) & (np.abs(x) < 150.0)
    breast = np.zeros(shape, dtype=bool)
    dist_n = np.full(shape, 9.0, dtype=np.float32)
    for sx in (-1.0, 1.0):
        d = np.sqrt(((x - sx * anatomy.breast_dx) / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)
        inside = (d <= 1.0) & (y < 0)
        breast |= inside
        dist_n = np.where(inside, np.minimum(dist_n, d), dist_n)
    texture = _smooth_noise(shape, 5.0, spacing, rng)
    fgt = breast & (texture + 1.6 * (1.0 - dist_n) - 0.8 > 1.2 - 2.4 * anatomy.density)
    fat = breast & ~fgt

    # tumour: lobulated ellipsoid; rho = normalised radius (<= 1 inside)
    cx, cy, cz = pheno.centre_mm
    rad = pheno.diameter_mm * diameter_scale / 2.0
    dx, dy, dz = x - cx, y - cy, z - cz
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    lobes = (np.cos(3.0 * np.arctan2(dy, dx)) * (dz / dist) + np.sin(2.0 * np.arctan2(dz, dx))) * 0.5
    rho = dist / (rad * (1.0 + pheno.lobulation * lobes))
    tumour = (rho <= 1.0) & (breast | (y < 0))
    het = 1.0 + pheno.heterogeneity * _smooth_noise(shape, 2.0, spacing, rng)
    rim_profile = (1.0 - pheno.rim) + pheno.rim * np.clip((rho - 0.45) / 0.4, 0.0, 1.0)
    tumour_weight = np.clip(het * rim_profile, 0.05, None)

    base = np.zeros(shape, dtype=np.float32)
    base[thorax] = T1_PRE["thorax"]
    base[muscle] = T1_PRE["muscle"]
    base[fat] = T1_PRE["fat"]
    base[fgt] = T1_PRE["fgt"]
    base *= 1.0 + 0.06 * texture
    base[tumour] = T1_PRE["tumour"] * (1.0 + 0.05 * texture[tumour])

    bias = _bias_field(x, y, z, nuisance)
    phases = []
    for t in times:
        rel = np.zeros(shape, dtype=np.float32)
        rel[fgt] = anatomy.bpe * (1.0 - math.exp(-t / 300.0)) if t > 0 else 0.0
        rel[muscle] = 0.3 * (1.0 - math.exp(-t / 100.0)) if t > 0 else 0.0
        rel[thorax & ~muscle] = enhancement(t, 0.6, 50.0, 0.0005)
        rel[fat] = 0.04 * (1.0 - math.exp(-t / 200.0)) if t > 0 else 0.0
        e_t = enhancement(t, pheno.peak_enhancement, pheno.wash_in_s, pheno.washout_per_s)
        rel[tumour] = e_t * tumour_weight[tumour]
        phases.append(_acquire(base * (1.0 + rel), bias, nuisance, rng))
    t2_img = None
    if t2:
        t2_base = np.zeros(shape, dtype=np.float32)
        for name, mask in (("thorax", thorax), ("muscle", muscle), ("fat", fat), ("fgt", fgt)):
            t2_base[mask] = T2_INT[name]
        t2_base *= 1.0 + 0.08 * texture
        t2_base[tumour] = T2_INT["tumour"] * pheno.t2_factor * (1.0 + 0.1 * (het[tumour] - 1.0))
        t2_img = _acquire(t2_base, bias, nuisance, rng)
    zz, yy, xx = np.nonzero(tumour)
    if not len(zz):
        raise ValueError(f"tumour at {pheno.centre_mm} mm lies outside the acquisition grid {shape}")
    box = (int(zz.min()), int(zz.max()), int(yy.min()), int(yy.max()), int(xx.min()), int(xx.max()))
    return phases, t2_img, box


def _bias_field(x: np.ndarray, y: np.ndarray, z: np.ndarray, nu: Nuisance) -> np.ndarray:
    xn, yn, zn = x / 200.0, y / 200.0, z / 200.0
    c = nu.bias_coef
    poly = c[0] * xn + c[1] * yn + c[2] * zn + c[3] * xn * yn + c[4] * xn * xn + c[5] * yn * yn + c[6] * zn * zn
    return np.exp(nu.bias_amp * poly).astype(np.float32)


def _acquire(signal: np.ndarray, bias: np.ndarray, nu: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Scanner: gain, bias field, offset, Rician noise, rescale slope, integer storage."""
    s = signal * bias * nu.gain + nu.offset
    re = s + rng.normal(0.0, nu.noise_sigma, s.shape).astype(np.float32)
    im = rng.normal(0.0, nu.noise_sigma, s.shape).astype(np.float32)
    mag = np.sqrt(re * re + im * im) / nu.rescale_slope
    return np.clip(np.rint(mag), 0, 2 ** nu.bits_stored - 1).astype(np.uint16)


def phenotype_dict(p: Phenotype) -> dict[str, object]:
    """Flat phenotype columns for truth.csv."""
    d = asdict(p)
    cx, cy, cz = d.pop("centre_mm")
    d.update(centre_x_mm=round(cx, 2), centre_y_mm=round(cy, 2), centre_z_mm=round(cz, 2))
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}
