"""Whole-study PACS exports: localiser, T2, DWI, derived subtraction and MIP series next to the DCE, and a
second (early-treatment) visit in the same patient folder. The DCE of the requested visit is chosen by
headers alone; the manifest records the study date and the series used; the T2 of that visit becomes the
``t2`` channel, resampled from its own (coarser) grid onto the DCE output grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import PrepConfig
from common.preprocess.dicom import group_patients, list_files, scan_files, select_series
from common.preprocess.pipeline import run_prepare
from common.site_cache import read_manifest
from tests.dicom_factory import Grid, phantom, uid, write_clinical, write_patient, write_series

GRID = Grid(slices=14, rows=32, cols=44, slice_mm=5.0, pixel_mm=3.5)
T2_GRID = Grid(slices=8, rows=24, cols=32, slice_mm=9.0, pixel_mm=4.8)
VISITS = {"v1": "20200101", "v2": "20200215"}


def _extras(root: Path, pid: str, tag: str, date: str) -> dict[str, str]:
    """Localiser, T2, DWI, subtraction and MIP series of one visit; returns kind -> series uid."""
    study = uid(pid, tag, "study")  # the study of write_patient(tag=tag)
    base = root / pid / f"{date}-study-{tag}"
    vols, _ = phantom(GRID, 2, seed=5)
    t2, _ = phantom(T2_GRID, 1, seed=6)
    loc_grid = Grid(slices=3, rows=32, cols=44, slice_mm=30.0, pixel_mm=3.5)
    loc, _ = phantom(loc_grid, 1, seed=7)
    spec = {
        "localiser": ("3-Plane Loc", 1, loc_grid, loc[0], {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
                                                           "RepetitionTime": "5.2", "EchoTime": "1.6"}),
        "t2": ("Ax T2 FSE", 2, T2_GRID, t2[0], {"RepetitionTime": "4000", "EchoTime": "102"}),
        "dwi": ("Ax DWI b800", 4, GRID, vols[0], {"RepetitionTime": "5200", "EchoTime": "68",
                                                 "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]}),
        "sub": ("ax dyn 1st pass - pre", 20, GRID, np.clip(vols[1] - vols[0] + 100, 0, 4000).astype(np.uint16),
                {"ImageType": ["DERIVED", "SECONDARY", "SUBTRACTION"]}),
        "mip": ("MIP ax dyn 1st pass", 21, GRID, vols[1], {"ImageType": ["DERIVED", "SECONDARY", "MIP"]}),
    }
    out = {}
    for kind, (desc, number, grid, vol, extra) in spec.items():
        s = uid(pid, tag, kind)
        write_series(base / f"{number}-{kind}", pid, study, s, desc, number, grid, [(vol, 0, 1)], date,
                     timing_tags=False, extra=extra)
        out[kind] = s
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("whole")
    root = base / "dicom"
    info = {}
    for tag, date in VISITS.items():
        info[tag] = write_patient(root, "WS1", grid=GRID, study_date=date, tag=tag, seed=1 if tag == "v1" else 2)
        info[tag]["extra"] = _extras(root, "WS1", tag, date)
    mapping = write_clinical(base / "clin.csv", {"WS1": "yes"})
    return {"base": base, "root": root, "info": info, "mapping": mapping}


@pytest.mark.parametrize("visit, tag", [("pre", "v1"), ("early", "v2"), ("latest", "v2"), ("20200101", "v1")])
def test_dce_of_the_requested_visit_is_chosen_by_headers(study: dict, visit: str, tag: str) -> None:
    heads = group_patients(scan_files(list_files(study["root"]))[0])["WS1"]
    sel = select_series("WS1", heads, visit)
    assert sel.study.date == VISITS[tag]
    assert [p.name for p in sel.phases] == ["pre", "post1", "post2"]
    assert [p.series_uid for p in sel.phases] == list(study["info"][tag]["files"])  # Duke: one series per phase
    assert sel.t2 is not None and sel.t2.series_uid == study["info"][tag]["extra"]["t2"]
    kinds = {s.uid: s.kind for s in sel.study.series}
    extra = study["info"][tag]["extra"]
    assert [kinds[extra[k]] for k in ("localiser", "t2", "dwi", "sub", "mip")] == \
        ["localiser", "t2", "dwi", "derived", "derived"]
    assert f"StudyDate {VISITS[tag]}" in sel.choice[0]


def test_unknown_or_missing_visit_is_a_clear_error(study: dict) -> None:
    from common.preprocess.dicom import DicomError

    heads = group_patients(scan_files(list_files(study["root"]))[0])["WS1"]
    with pytest.raises(DicomError, match="no DCE study on StudyDate 20200301"):
        select_series("WS1", heads, "20200301")
    with pytest.raises(DicomError, match="unsupported visit rule 'second'"):
        select_series("WS1", heads, "second")


@pytest.mark.parametrize("visit, tag", [("pre", "v1"), ("early", "v2")])
def test_manifest_records_visit_and_series_and_t2_channel(study: dict, tmp_path: Path, visit: str, tag: str) -> None:
    cfg = PrepConfig(channels=("pre", "post1", "sub1", "t2"), shape=(12, 12, 12), spacing_mm=3.0, visit=visit)
    res = run_prepare(study["root"], study["base"] / "clin.csv", tmp_path / "c", cfg, clinical_format="csv",
                      mapping=study["mapping"], progress=False)
    assert res.processed == ["WS1"], res.skipped
    row = read_manifest(tmp_path / "c").iloc[0]
    info = study["info"][tag]
    assert str(row["study_date"]) == VISITS[tag] and row["study_uid"] == info["study"]
    assert row["dce_series"].split(";") == list(info["files"])
    assert row["t2_series"] == info["extra"]["t2"] and int(row["t2_present"]) == 1
    vol = np.load(tmp_path / "c" / row["volume"]).astype(np.float32)
    t2 = vol[3]
    assert np.isfinite(t2).all() and t2.std() > 0.1
    # the crop is centred on the tumour, bright on T2 too: the centre of the t2 channel stands out
    assert t2[5:7, 5:7, 5:7].mean() > np.percentile(t2, 75)
