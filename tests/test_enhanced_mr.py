"""Enhanced MR Image Storage (multi-frame, functional groups): phases from TemporalPositionIndex, from
FrameAcquisitionDateTime alone (frames shuffled) or from one file per phase; the same phase names, times,
pixels and geometry as the same phantom written as classic one-slice-per-file DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.config import PrepConfig
from common.preprocess.dicom import group_patients, list_files, phase_seconds, scan_files, select_series
from common.preprocess.pipeline import run_prepare
from common.preprocess.volume import phase_image, to_array
from tests.dicom_factory import Grid, write_boxes, write_clinical, write_enhanced, write_patient

GRID = Grid(slices=8, rows=24, cols=32, slice_mm=6.0, pixel_mm=4.5)
TIMES = (0, 75, 160)


def _select(root: Path, pid: str):
    heads, ignored, _ = scan_files(list_files(root))
    return select_series(pid, group_patients(heads)[pid]), ignored


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("classic")
    write_patient(root, "C", layout="ispy", grid=GRID, times=TIMES, seed=3)
    return _select(root, "C")[0]


@pytest.mark.parametrize("mode", ["tpi", "datetime", "files"])
def test_enhanced_phases_pixels_and_geometry_match_classic(tmp_path: Path, classic, mode: str) -> None:
    info = write_enhanced(tmp_path / "E", "E", GRID, TIMES, mode=mode, seed=3)
    assert pydicom.dcmread(info["files"][0]).SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    sel, ignored = _select(tmp_path, "E")
    assert ignored == []
    assert [p.name for p in sel.phases] == ["pre", "post1", "post2"]
    assert phase_seconds(sel.phases) == [0.0, 75.0, 160.0]
    assert phase_seconds(classic.phases) == phase_seconds(sel.phases)
    for k, (pe, pc) in enumerate(zip(sel.phases, classic.phases)):
        ie, ic = phase_image(pe), phase_image(pc)
        np.testing.assert_array_equal(to_array(ie), info["vols"][k].astype(np.float32))
        np.testing.assert_array_equal(to_array(ie), to_array(ic))
        np.testing.assert_allclose(ie.GetOrigin(), ic.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(ie.GetSpacing(), ic.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(ie.GetDirection(), ic.GetDirection(), atol=1e-6)
    assert [p.contrast for p in sel.phases] == [False, True, True]


def test_enhanced_patient_is_prepared_and_a_broken_one_reported(tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    good = write_enhanced(root / "E1", "E1", GRID, TIMES, mode="tpi", seed=1)
    bad = write_enhanced(root / "E2", "E2", GRID, TIMES, mode="tpi", seed=2)
    ds = pydicom.dcmread(bad["files"][0])
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(bad["files"][0])
    write_boxes(tmp_path / "boxes.xlsx", {"E1": good["box"], "E2": bad["box"]})
    mapping = write_clinical(tmp_path / "clin.csv", {"E1": "yes", "E2": "no"})
    res = run_prepare(root, tmp_path / "clin.csv", tmp_path / "cache", PrepConfig(shape=(8, 8, 8), spacing_mm=4.0),
                      clinical_format="csv", mapping=mapping, boxes=tmp_path / "boxes.xlsx", progress=False)
    assert res.processed == ["E1"]
    [ig] = res.ignored_files
    assert ig["file"] == str(bad["files"][0])
    assert "frame 4 of PatientID E2" in ig["reason"] and "Plane Position" in ig["reason"]
