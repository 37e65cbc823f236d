"""Series discovery, slice ordering, phase splitting/naming and geometry, on small DICOM series written here."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from common.config import PrepConfig
from common.paths import DATA_DIR
from common.preprocess.dicom import description_phase, group_patients, list_files, scan_files, select_series
from common.preprocess.pipeline import run_prepare
from tests.dicom_factory import (BODY_SEMI_AXES, TUMOUR_CENTRE, TUMOUR_RADIUS, Grid, write_boxes, write_clinical,
                                 write_patient, write_series, phantom, uid)

SAG = Grid(view="sagittal", slices=36, rows=32, cols=40, slice_mm=4.0, pixel_mm=3.0)


def _select(root: Path, pid: str):
    heads, ignored, _ = scan_files(list_files(root))
    return select_series(pid, group_patients(heads)[pid]), ignored


def _positions(phase) -> np.ndarray:
    n = np.cross(phase.slices[0].iop[:3], phase.slices[0].iop[3:])
    return np.array([np.dot(s.ipp, n) for s in phase.slices])


def test_duke_md_spellings() -> None:
    """Every SeriesDescription spelling listed in data/duke/duke_series_descriptions.md parses as documented."""
    text = (DATA_DIR / "duke" / "duke_series_descriptions.md").read_text()
    pre_line = next(line for line in text.splitlines() if line.startswith("- pre"))
    pre = re.findall(r"`([^`]+)`", pre_line)
    assert len(pre) >= 8
    for d in pre:  # explicit 'pre', or no pass marker (the Duke rule resolves it next to PhN/ series)
        assert description_phase(d) in (0, None), d
    ords = {"1st": 1, "2nd": 2, "3rd": 3, "4th": 4}
    for o, k in ords.items():
        for d in (f"ax dyn {o} pass", f"ax 3d dyn {o} pass", f"{o} ax dyn", f"t1_fl3d_tra_dynVIEWS_spair {o} pass"):
            assert description_phase(d) == k, d
        for base in ("ax 3d dyn", "ax 3d dyn MP", "ax dyn", "ax dynamic", "Ax Vibrant MultiPhase"):
            assert description_phase(f"Ph{k}/{base}") == k
    assert description_phase("ax dyn 1st pas") == 1
    for d in ("ax t1", "ax t1 tse", "Ax 3D T1 NON FS"):
        assert description_phase(d) is None


def test_duke_vs_ispy_layout(tmp_path: Path) -> None:
    times = (0, 75, 160, 250)
    write_patient(tmp_path, "D1", layout="duke", times=times, names="shuffled", seed=1)
    write_patient(tmp_path, "I1", layout="ispy", times=times, names="shuffled", seed=2)
    d, _ = _select(tmp_path, "D1")
    i, _ = _select(tmp_path, "I1")
    for sel in (d, i):
        assert [p.name for p in sel.phases] == ["pre", "post1", "post2", "post3"]
        assert [p.acq_time - sel.phases[0].acq_time for p in sel.phases] == list(times)
        for p in sel.phases:  # ordered by position along the normal, whatever the file names say
            assert np.all(np.diff(_positions(p)) > 0)
    assert [p.description for p in d.phases] == ["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass"]
    assert len({p.series_uid for p in d.phases}) == 4 and len({p.series_uid for p in i.phases}) == 1
    # the I-SPY split gives the same voxels per phase as the Duke series of the same phantom
    vols, _ = phantom(Grid(), 4, seed=1)
    for k, p in enumerate(d.phases):
        first = pydicom.dcmread(p.files[0]).pixel_array
        assert np.array_equal(first, vols[k][0])


def test_description_fallback_and_duke_pre_rule(tmp_path: Path) -> None:
    """No timing tags: Duke 'ax 3d dyn' + 'PhK/ax 3d dyn' are ordered by description; unmarked = pre."""
    vols, _ = phantom(Grid(), 3)
    study = uid("X", "study")
    descs = ["Ph2/ax 3d dyn", "ax 3d dyn", "Ph1/ax 3d dyn"]  # series numbers scrambled on purpose
    order = [2, 0, 1]
    for n, (desc, k) in enumerate(zip(descs, order)):
        write_series(tmp_path / f"s{n}", "X", study, uid("X", n), desc, 10 - n, Grid(), [(vols[k], 0, 1)],
                     timing_tags=False)
    sel, _ = _select(tmp_path, "X")
    assert [p.description for p in sel.phases] == ["ax 3d dyn", "Ph1/ax 3d dyn", "Ph2/ax 3d dyn"]
    assert "SeriesDescription" in " ".join(sel.choice)


def test_repeated_positions_without_timing(tmp_path: Path) -> None:
    vols, _ = phantom(Grid(), 3)
    write_series(tmp_path, "R", uid("R", "s"), uid("R", "x"), "DCE", 5, Grid(),
                 [(v, 0, 1) for v in vols], timing_tags=False)
    heads, _, _ = scan_files(list_files(tmp_path))
    from common.preprocess.dicom import Series, split_series

    ser = Series(uid=heads[0].series_uid, description="DCE", number=5, slices=heads)
    phases = split_series(ser)
    assert len(phases) == 3
    for k, p in enumerate(phases):
        assert np.array_equal(pydicom.dcmread(p.files[3]).pixel_array, vols[k][3])


def test_flat_pacs_export_and_visits_and_t2(tmp_path: Path) -> None:
    flat = tmp_path / "export"
    write_patient(flat, "A", layout="duke", flat=True, names="shuffled", study_date="20200301", tag="later", seed=5)
    write_patient(flat, "A", layout="duke", flat=True, names="shuffled", study_date="20200102", tag="first", seed=6)
    write_patient(flat, "B", layout="ispy", flat=True, names="shuffled", seed=7)
    t2 = phantom(Grid(), 1, seed=9)[0][0]
    write_series(flat, "B", uid("B", "v0", "study"), uid("B", "t2"), "Ax T2 FSE", 2, Grid(), [(t2, -600, 1)],
                 names="shuffled", timing_tags=False)
    assert len({p.parent for p in flat.iterdir()}) == 1
    heads, ignored, _ = scan_files(list_files(flat))
    pts = group_patients(heads)
    assert sorted(pts) == ["A", "B"] and not ignored
    a = select_series("A", pts["A"])
    assert a.study.date == "20200102" and "earliest of 2 studies" in a.choice[0]
    b = select_series("B", pts["B"])
    assert b.t2 is not None and b.t2.description == "Ax T2 FSE" and len(b.phases) == 3


def _output_coords(shape: tuple[int, int, int], centre: np.ndarray, sp: float) -> tuple[np.ndarray, ...]:
    """LPS physical coordinates (x, y, z) of the output voxels (z, y, x) of a cache volume."""
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * sp + centre[a] for n, a in zip(shape, (2, 1, 0))],
                          indexing="ij")
    return x, y, z


def test_geometry_sagittal_reoriented_and_standardised(tmp_path: Path) -> None:
    """Axial and sagittal acquisitions of one phantom land on the same LPS grid: the tumour where the phantom
    puts it, pre-contrast mean ~0 / sd ~1 in the (analytic) body, and tumour box crops centred on the tumour."""
    root = tmp_path / "dicom"
    boxes = {"AX": write_patient(root, "AX", layout="duke", seed=1)["box"],
             "SAG": write_patient(root, "SAG", layout="ispy", grid=SAG, names="shuffled", seed=2)["box"]}
    write_boxes(tmp_path / "boxes.xlsx", boxes)
    mapping = write_clinical(tmp_path / "clin.csv", {"AX": "yes", "SAG": "no"})
    cfg = PrepConfig(crop="breast", shape=(40, 56, 72), spacing_mm=2.0)
    run_prepare(root, tmp_path / "clin.csv", tmp_path / "c1", cfg, clinical_format="csv", mapping=mapping,
                progress=False)
    man = pd.read_csv(tmp_path / "c1" / "manifest.csv").set_index("patient_id")
    assert man.loc["SAG", "view"] == "sagittal" and man.loc["AX", "view"] == "axial"
    vols = {}
    for pid in ("AX", "SAG"):
        v = np.load(tmp_path / "c1" / man.loc[pid, "volume"]).astype(np.float32)
        vols[pid] = v
        centre = np.array([float(c) for c in man.loc[pid, "crop_centre"].split(";")])
        x, y, z = _output_coords(cfg.shape, centre, cfg.spacing_mm)
        a, b, c = BODY_SEMI_AXES
        body = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 0.85 ** 2
        tx, ty, tz = TUMOUR_CENTRE
        tum = (x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= (0.7 * TUMOUR_RADIUS) ** 2
        assert abs(v[0][body].mean()) < 0.2 and 0.8 < v[0][body].std() < 1.25
        assert v[2][tum].mean() > v[2][body & ~tum].mean() + 3.0  # sub1: tumour enhances
    assert np.corrcoef(vols["AX"][2].ravel(), vols["SAG"][2].ravel())[0, 1] > 0.9
    # tumour crop: box (pre-contrast voxel indices) -> physical -> output grid centre
    cfg_t = PrepConfig(crop="tumour", shape=(16, 16, 16), spacing_mm=2.0)
    run_prepare(root, tmp_path / "clin.csv", tmp_path / "c2", cfg_t, clinical_format="csv", mapping=mapping,
                boxes=tmp_path / "boxes.xlsx", progress=False)
    man2 = pd.read_csv(tmp_path / "c2" / "manifest.csv").set_index("patient_id")
    for pid in ("AX", "SAG"):
        centre = np.array([float(c) for c in man2.loc[pid, "crop_centre"].split(";")])
        assert np.linalg.norm(centre - np.array(TUMOUR_CENTRE)) < 3.5  # within a voxel of the true centre
        sub = np.load(tmp_path / "c2" / man2.loc[pid, "volume"]).astype(np.float32)[2]
        assert sub[6:10, 6:10, 6:10].mean() > sub[0].mean() + 3.0


def test_hash_changes_with_config_only() -> None:
    assert PrepConfig().hash() == PrepConfig().hash()
    assert PrepConfig(spacing_mm=1.0).hash() != PrepConfig().hash()


@pytest.mark.parametrize("view", ["axial", "sagittal"])
def test_box_matches_phantom_voxels(tmp_path: Path, view: str) -> None:
    """The box read back from Annotation_Boxes.xlsx indexes the tumour voxels of the pre-contrast series."""
    from common.preprocess.boxes import load_boxes
    from common.preprocess.volume import phase_image, to_array

    grid = SAG if view == "sagittal" else Grid()
    info = write_patient(tmp_path / "d", "P9", layout="ispy", grid=grid, names="shuffled")
    write_boxes(tmp_path / "b.xlsx", {"P9": info["box"]})
    box = next(iter(load_boxes(tmp_path / "b.xlsx").values()))
    sel, _ = _select(tmp_path / "d", "P9")
    pre, post = (to_array(phase_image(p)) for p in sel.phases[:2])
    enh = post - pre
    z0, z1, y0, y1, x0, x1 = box
    inside = enh[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1].mean()
    assert inside > 3 * enh.mean() and box == info["box"]
    shutil.rmtree(tmp_path / "d")


def test_real_duke_boxes_file() -> None:
    """The shipped Duke Annotation_Boxes.xlsx: 1-based rows become 0-based (z0,z1,y0,y1,x0,x1) by id_key."""
    from openpyxl import load_workbook

    from common.preprocess.boxes import load_boxes
    from common.patient_id import id_key

    boxes = load_boxes(DATA_DIR / "duke" / "Annotation_Boxes.xlsx")
    ws = load_workbook(DATA_DIR / "duke" / "Annotation_Boxes.xlsx", read_only=True).worksheets[0]
    rows = list(ws.iter_rows(values_only=True))
    head = [str(c).strip() for c in rows[0]]
    assert len(boxes) == len(rows) - 1 > 900
    for r in rows[1:6]:
        v = dict(zip(head, r))
        assert boxes[id_key(v["Patient ID"])] == (v["Start Slice"] - 1, v["End Slice"] - 1, v["Start Row"] - 1,
                                                  v["End Row"] - 1, v["Start Column"] - 1, v["End Column"] - 1)


@pytest.mark.parametrize("drop", [(), ("TemporalPositionIdentifier",),
                                  ("TemporalPositionIdentifier", "TriggerTime")])
def test_multiphase_split_by_each_timing_tag(tmp_path: Path, drop: tuple[str, ...]) -> None:
    """TemporalPositionIdentifier, else TriggerTime, else AcquisitionTime splits an I-SPY series correctly."""
    times = (0, 70, 150, 240)
    write_patient(tmp_path, "S", layout="ispy", times=times, names="shuffled", seed=4)
    for f in list_files(tmp_path):
        ds = pydicom.dcmread(f)
        for tag in drop:
            delattr(ds, tag)
        ds.save_as(f)
    sel, _ = _select(tmp_path, "S")
    vols, _ = phantom(Grid(), len(times), seed=4)
    assert [p.name for p in sel.phases] == ["pre", "post1", "post2", "post3"]
    for k, p in enumerate(sel.phases):
        assert np.array_equal(pydicom.dcmread(p.files[7]).pixel_array, vols[k][7])
        assert p.acq_time - sel.phases[0].acq_time == times[k]
