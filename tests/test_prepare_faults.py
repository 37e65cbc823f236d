"""``fedpcr prepare`` survives what a hospital file system and native codecs do: a worker process that
dies (os._exit / SIGKILL, as a segfaulting codec or the OOM killer would) costs only its patient, and
folders that cannot be listed are reported (naming the folder and, where known, the patient).

The tests run as root, where ``chmod 000`` does not stop reading; unreadability is produced by a
dangling symbolic link (real) and by making only ``os.scandir`` fail for one folder (monkeypatched).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from common.config import PrepConfig
from common.parallel import map_with_progress
from common.preprocess import pipeline
from common.preprocess.dicom_headers import walk_files
from common.preprocess.pipeline import run_prepare
from tests.dicom_factory import Grid, write_boxes, write_clinical, write_patient

CFG = PrepConfig(crop="tumour", shape=(12, 12, 12), spacing_mm=3.0)
GRID = Grid(slices=10, rows=24, cols=32, slice_mm=6.0, pixel_mm=4.5)
PIDS = ("P1", "P2", "P3", "P4")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("faults")
    info = {p: write_patient(base / "dicom", p, grid=GRID, seed=i) for i, p in enumerate(PIDS)}
    write_boxes(base / "boxes.xlsx", {p: info[p]["box"] for p in PIDS})
    mapping = write_clinical(base / "clin.csv", {p: "yes" if i % 2 else "no" for i, p in enumerate(PIDS)})
    return {"base": base, "dicom": base / "dicom", "boxes": base / "boxes.xlsx", "clin": base / "clin.csv",
            "mapping": mapping}


def _run(site: dict, out: Path, workers: int = 2):
    return run_prepare(site["dicom"], site["clin"], out, CFG, clinical_format="csv", mapping=site["mapping"],
                       boxes=site["boxes"], workers=workers, progress=False)


def _die(x: int) -> int:
    if x == 3:
        os._exit(7)
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def test_map_survives_dying_workers_and_names_the_job() -> None:
    out = map_with_progress(_die, list(range(8)), workers=2, desc="t", unit="j", progress=False,
                            on_crash=lambda j, why: f"crashed {j}: {why}")
    assert out[:3] == [0, 10, 20] and out[4] == 40 and out[6:] == [60, 70]
    assert out[3].startswith("crashed 3: the worker process died")
    assert out[5].startswith("crashed 5: the worker process died")


def test_map_without_on_crash_still_raises() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        map_with_progress(_die, [1, 3, 4], workers=2, desc="t", unit="j", progress=False)


def test_prepare_survives_a_worker_killed_inside_one_patient(site: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.process_patient

    def crashing(pid, *args):  # the codec of P2's files segfaults / the OOM killer strikes
        if pid == "P2":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(pid, *args)

    monkeypatch.setattr(pipeline, "process_patient", crashing)  # fork start: workers inherit it
    res = _run(site, tmp_path / "cache")
    assert res.processed == ["P1", "P3", "P4"]
    [skip] = res.skipped
    assert skip["patient"] == "P2" and "worker process died" in skip["reason"]


def test_unreadable_folders_are_reported_never_dropped(site: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    dicom = site["dicom"]
    p3_series = sorted((dicom / "P3").glob("*/*"))[1]  # one DCE series folder of P3
    link = dicom / "P9_missing_export"
    link.symlink_to(site["base"] / "gone")  # a dangling link (a dropped network share)
    real_scandir = os.scandir

    def scandir(path=".", *a):
        if os.fspath(path) == str(p3_series):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *a)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        files, bad = walk_files(dicom)
        assert {b["folder"] for b in bad} == {str(p3_series), str(link)}
        assert not any(f.startswith(str(p3_series)) for f in files)
        res = _run(site, tmp_path / "cache", workers=1)
    finally:
        link.unlink()
    assert res.processed == ["P1", "P2", "P4"]
    [skip] = res.skipped
    assert skip["patient"] == "P3" and str(p3_series) in skip["reason"] and "Permission denied" in skip["reason"]
    reported = {u["folder"]: u["reason"] for u in res.unreadable}
    assert "Permission denied" in reported[str(p3_series)] and "broken symbolic link" in reported[str(link)]
    assert "unreadable" in res.summary() and str(link) in res.summary()
