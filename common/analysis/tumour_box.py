"""Where the known tumour box lies in cache coordinates, for scoring explanations on a cohort with ground truth.

With ``PrepConfig.crop == "tumour"`` the output grid is centred on the box centre (common/preprocess/
pipeline.py: ``box_centre`` -> ``output_grid``), so the box is centred in the cached volume; its extent
follows from the native box size, the native voxel spacing and axes, and the output grid's axes. The
embedded cohort's ``truth.csv`` (docs/CONTRACTS.md section 1) carries all of these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

Box = tuple[int, int, int, int, int, int]  # (z0, z1, y0, y1, x0, x1), 0-based inclusive


def grid_axes(native_direction: np.ndarray, orientation: str) -> np.ndarray:
    """Columns = the output grid's x, y, z axes in world coordinates (as ``output_grid`` builds them)."""
    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetDirection(tuple(float(c) for c in np.asarray(native_direction, float).ravel()))
    return np.asarray(sitk.DICOMOrient(probe, orientation).GetDirection()).reshape(3, 3)


def centred_box(native_box: Box, native_spacing_zyx: tuple[float, float, float], native_direction: np.ndarray,
                shape_zyx: tuple[int, int, int], spacing_mm: float, orientation: str) -> Box:
    """Cache-voxel box of a native box whose centre is the cache grid's centre.

    ``native_direction`` columns are the native x (column), y (row) and z (slice) axes in world space.
    The box covers every cache voxel whose centre lies inside the native voxels' footprint.
    """
    z0, z1, y0, y1, x0, x1 = native_box
    sz, sy, sx = native_spacing_zyx
    d = np.asarray(native_direction, float).reshape(3, 3)
    half_world = [d[:, 0] * (x1 - x0 + 1) * sx / 2, d[:, 1] * (y1 - y0 + 1) * sy / 2, d[:, 2] * (z1 - z0 + 1) * sz / 2]
    g = grid_axes(d, orientation)
    half = [sum(abs(float(g[:, j] @ a)) for a in half_world) / spacing_mm for j in range(3)]  # x, y, z in voxels
    out: list[int] = []
    for size, h in zip(shape_zyx, half[::-1]):  # z, y, x
        c = (size - 1) / 2.0
        out += [max(int(np.ceil(c - h)), 0), min(int(np.floor(c + h)), size - 1)]
    return tuple(out)  # type: ignore[return-value]


def boxes_from_truth(truth_csv: str | Path, patient_ids: list[str], prep_config: dict) -> dict[str, Box]:
    """Cache-coordinate tumour boxes of ``patient_ids`` from an embedded cohort's ``truth.csv``.

    Needs ``crop == "tumour"``; patients absent from the truth file are left out.
    """
    if prep_config.get("crop", "tumour") != "tumour":
        raise ValueError(f"tumour boxes in cache coordinates need PrepConfig.crop='tumour'; this cache has "
                         f"crop={prep_config.get('crop')!r}")
    truth = pd.read_csv(truth_csv, dtype={"patient_id": str})
    need = {"patient_id", "tumour_box", "spacing", "orientation"}
    if not need <= set(truth.columns):
        raise ValueError(f"{truth_csv}: needs columns {sorted(need)}; has {sorted(truth.columns)}")
    truth = truth.drop_duplicates("patient_id").set_index("patient_id")
    shape = tuple(int(v) for v in prep_config.get("shape", (32, 32, 32)))
    spacing = float(prep_config.get("spacing_mm", 2.0))
    orientation = str(prep_config.get("orientation", "LPS"))
    boxes: dict[str, Box] = {}
    for pid in patient_ids:
        if pid not in truth.index:
            continue
        r = truth.loc[pid]
        box = tuple(int(v) for v in str(r["tumour_box"]).split(";"))
        sz, sy, sx = (float(v) for v in str(r["spacing"]).split("x"))
        uv = np.array([float(v) for v in str(r["orientation"]).split(";")])
        u, v = uv[:3], uv[3:]
        direction = np.stack([u, v, np.cross(u, v)], axis=1)
        boxes[pid] = centred_box(box, (sz, sy, sx), direction, shape, spacing, orientation)  # type: ignore[arg-type]
    return boxes


def box_mask(shape_zyx: tuple[int, ...], box: Box) -> np.ndarray:
    """Boolean (z, y, x) mask of an inclusive box."""
    m = np.zeros(shape_zyx, bool)
    z0, z1, y0, y1, x0, x1 = box
    m[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = True
    return m


__all__ = ["Box", "box_mask", "boxes_from_truth", "centred_box", "grid_axes"]
