"""A corpus of broken inputs: the right patients are skipped for the right reasons, the others are intact,
and the source tree is byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from common.config import PrepConfig
from common.preprocess.pipeline import run_prepare
from tests.dicom_factory import Grid, phantom, uid, write_boxes, write_clinical, write_patient, write_series

CFG = PrepConfig(crop="tumour", localisation="annotation", shape=(16, 16, 16), spacing_mm=2.5)  # boxes required


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for f in sorted(files):
            p = Path(dirpath) / f
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _series_files(info: dict, k: int = 0) -> list[Path]:
    return sorted(list(info["files"].values())[k])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("broken")
    root = base / "dicom"
    info = {pid: write_patient(root, pid, layout=layout, seed=i)
            for i, (pid, layout) in enumerate([("GOOD1", "duke"), ("GOOD2", "ispy"), ("TRUNC", "duke"),
                                               ("NOPIX", "duke"), ("SPACING", "duke"), ("ORIENT", "ispy"),
                                               ("NOCLIN", "duke"), ("NOLABEL", "duke"), ("BADCODE", "duke"),
                                               ("DUP", "duke"), ("NOBOX", "duke"), ("TRUNCHDR", "duke")])}
    info["NOPRE"] = write_patient(root, "NOPRE", layout="duke", skip_phases=(0,), seed=20)
    # truncated file: cut a DCE slice in the middle of its pixel data
    f = _series_files(info["TRUNC"], 1)[4]
    f.write_bytes(f.read_bytes()[: f.stat().st_size - 900])
    # truncated inside the header: the file cannot be parsed (an edge slice: the series would look complete)
    f = _series_files(info["TRUNCHDR"], 0)[0]
    f.write_bytes(f.read_bytes()[:400])
    # missing pixel data
    f = _series_files(info["NOPIX"], 0)[2]
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    # inconsistent slice spacing: move one slice 1.7 mm along the normal
    f = _series_files(info["SPACING"], 0)[7]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 1.7]
    ds.save_as(f)
    # mixed orientations in the one DCE series
    f = _series_files(info["ORIENT"], 0)[5]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [0.9848, 0.1736, 0, -0.1736, 0.9848, 0]
    ds.save_as(f)
    # duplicated series: the pre-contrast acquired twice (same description, later SeriesNumber)
    vols, _ = phantom(Grid(), 1, seed=9)
    dup_uid = uid("DUP", "repeat-pre")
    write_series(root / "DUP" / "repeat", "DUP", info["DUP"]["study"], dup_uid, "ax dyn pre", 30, Grid(),
                 [(vols[0], 0, 1)])
    # stray objects in a good patient's folder: text, junk binary, a CT slice, an SR-like non-image
    good = root / "GOOD1"
    (good / "notes.txt").write_text("scanned by the PACS export tool\n")
    (good / "junk.dcm").write_bytes(b"\x00" * 300 + b"not dicom")
    write_series(good / "ct", "GOOD1", info["GOOD1"]["study"], uid("GOOD1", "ct"), "CT chest", 99, Grid(slices=3),
                 [(vols[0][:3], 0, 1)], modality="CT")
    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPInstanceUID = uid("sr")
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID, sr.Modality, sr.PatientID = sr.file_meta.MediaStorageSOPClassUID, uid("sr"), \
        "SR", "GOOD1"
    sr.save_as(good / "report.dcm", enforce_file_format=True)
    boxes = {p: i["box"] for p, i in info.items() if p != "NOBOX"}
    write_boxes(base / "boxes.xlsx", boxes)
    labels = {p: "yes" if k % 2 else "no" for k, p in enumerate(info) if p != "NOCLIN"}
    labels["NOLABEL"] = ""
    labels["BADCODE"] = "maybe"
    mapping = write_clinical(base / "clin.csv", labels)
    before = tree_hash(root)
    res = run_prepare(root, base / "clin.csv", base / "cache", CFG, clinical_format="csv", mapping=mapping,
                      boxes=base / "boxes.xlsx", workers=2, progress=False)
    return {"base": base, "root": root, "res": res, "before": before, "mapping": mapping}


EXPECT = {  # patient -> words its skip reason must contain
    "TRUNC": ["TRUNC", "pixel data"],
    "TRUNCHDR": ["unreadable DICOM file", "TRUNCHDR", "1-001.dcm"],
    "NOPIX": ["missing pixel data", "NOPIX"],
    "SPACING": ["inconsistent slice spacing", "ax dyn pre"],
    "ORIENT": ["mixed orientations", "Dynamic-3dfgre"],
    "NOCLIN": ["no clinical row", "clin.csv"],
    "NOLABEL": ["no pCR label"],
    "BADCODE": ["clinical issue", "pcr", "maybe"],
    "NOPRE": ["missing pre-contrast phase"],
    "NOBOX": ["no tumour box", "boxes.xlsx"],
}


def test_right_patients_skipped_for_right_reasons(corpus: dict) -> None:
    res = corpus["res"]
    skipped = {s["patient"]: s["reason"] for s in res.skipped}
    assert set(skipped) == set(EXPECT), skipped
    for pid, words in EXPECT.items():
        for w in words:
            assert w.lower() in skipped[pid].lower(), (pid, skipped[pid])
    assert sorted(res.processed) == ["DUP", "GOOD1", "GOOD2"]


def test_others_intact_and_choices_recorded(corpus: dict) -> None:
    base = corpus["base"]
    man = pd.read_csv(base / "cache" / "manifest.csv").set_index("patient_id")
    for pid in ("GOOD1", "GOOD2", "DUP"):
        v = np.load(base / "cache" / man.loc[pid, "volume"])
        assert v.shape == (3, 16, 16, 16) and np.isfinite(v.astype(np.float32)).all()
        assert man.loc[pid, "phases"] == "pre;post1;post2"
    assert "duplicate series for the same phase" in man.loc["DUP", "series_choice"]
    assert "kept #30" in man.loc["DUP", "series_choice"]
    rep = json.loads((base / "cache" / "report.json").read_text())
    ignored = {d["file"]: d["reason"] for d in rep["ignored_files"]}
    assert ignored["GOOD1/notes.txt"] == "not a DICOM file" and ignored["GOOD1/junk.dcm"] == "not a DICOM file"
    assert "not MR" in ignored["GOOD1/report.dcm"]
    assert sum("Modality CT" in r for r in ignored.values()) == 3
    assert any(i["patient"] == "BADCODE" for i in rep["clinical_issues"])


def test_source_unchanged(corpus: dict) -> None:
    assert tree_hash(corpus["root"]) == corpus["before"]


def test_rerun_incremental_retries_only_failures(corpus: dict) -> None:
    base = corpus["base"]
    res = run_prepare(corpus["root"], base / "clin.csv", base / "cache", CFG, clinical_format="csv",
                      mapping=corpus["mapping"], boxes=base / "boxes.xlsx", progress=False)
    assert sorted(res.reused) == ["DUP", "GOOD1", "GOOD2"]
    assert {s["patient"] for s in res.skipped} == set(EXPECT)
    assert tree_hash(corpus["root"]) == corpus["before"]


def test_output_inside_source_refused(corpus: dict) -> None:
    with pytest.raises(ValueError, match="inside the DICOM tree"):
        run_prepare(corpus["root"], corpus["base"] / "clin.csv", corpus["root"] / "cache", CFG, progress=False,
                    clinical_format="csv", mapping=corpus["mapping"], boxes=corpus["base"] / "boxes.xlsx")
