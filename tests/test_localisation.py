"""Tumour localisation without Duke boxes: boxes from a CSV table, a folder of NIfTI masks named by patient
(MAMA-MIA layout, on a grid of their own), a DICOM-SEG in the patient's tree (written with highdicom), and
the automatic localisation when nothing is annotated; the source of every box lands in the manifest, the
prep hash covers the method, and ``fedpcr prepare --dicom D --clinical C --out O`` works out of the box."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from common.cli import main as fedpcr_main
from common.config import PrepConfig
from common.preprocess.localise import box_iou
from common.preprocess.pipeline import run_prepare
from common.site_cache import read_manifest, read_prep_config, read_prep_hash
from tests.dicom_factory import TUMOUR_CENTRE, TUMOUR_RADIUS, Grid, uid, write_patient

GRID = Grid(slices=16, rows=32, cols=44, slice_mm=5.0, pixel_mm=3.5)
CFG = PrepConfig(shape=(12, 12, 12), spacing_mm=3.0)
PIDS = ("Breast_MRI_007", "NIFTI_PT", "SEG_PT", "AUTO_PT", "CSV_PT")


def _nifti_mask(path: Path) -> None:
    """The phantom's tumour sphere on an isotropic 2 mm LPS grid of its own (not the DCE grid)."""
    size = np.array([60, 50, 40])  # x, y, z voxels
    origin = -(size - 1) / 2 * 2.0
    zz, yy, xx = np.meshgrid(*[origin[a] + 2.0 * np.arange(size[a]) for a in (2, 1, 0)], indexing="ij")
    tx, ty, tz = TUMOUR_CENTRE
    arr = ((xx - tx) ** 2 + (yy - ty) ** 2 + (zz - tz) ** 2 <= TUMOUR_RADIUS ** 2).astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    img.SetOrigin(tuple(float(c) for c in origin))
    sitk.WriteImage(img, str(path))


def _seg(folder: Path, files: list[Path], box: tuple[int, ...]) -> Path:
    """A DICOM-SEG (highdicom) of the box region of the pre-contrast series, in the patient's tree."""
    src = [pydicom.dcmread(f) for f in sorted(files)]
    src.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    for d in src:  # patient/study module attributes highdicom copies (empty in our phantom files)
        for kw in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
            setattr(d, kw, d.get(kw, ""))
    mask = np.zeros((len(src), src[0].Rows, src[0].Columns), bool)
    z0, z1, y0, y1, x0, x1 = box
    mask[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=src, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=uid("seg", "series"), series_number=99,
        sop_instance_uid=uid("seg", "sop"), instance_number=1, manufacturer="test", manufacturer_model_name="t",
        software_versions="1", device_serial_number="1")
    folder.mkdir(parents=True, exist_ok=True)
    seg.save_as(folder / "seg.dcm")
    return folder / "seg.dcm"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("loc")
    root = base / "dicom"
    info = {p: write_patient(root, p, grid=GRID, seed=i) for i, p in enumerate(PIDS)}
    masks = base / "masks"
    masks.mkdir()
    _nifti_mask(masks / "duke_007.nii.gz")  # MAMA-MIA spelling of Breast_MRI_007
    _nifti_mask(masks / "nifti_pt.nii.gz")
    # the SEG marks a box one voxel smaller than the tumour's, to tell it apart from the automatic one
    tb = info["SEG_PT"]["box"]
    seg_box = (tb[0] + 1, tb[1] - 1, tb[2] + 1, tb[3] - 1, tb[4] + 1, tb[5] - 1)
    pre_files = next(iter(info["SEG_PT"]["files"].values()))
    seg = _seg(root / "SEG_PT" / "seg", pre_files, seg_box)
    b = info["CSV_PT"]["box"]
    pd.DataFrame([{"Patient ID": "CSV_PT", "Start Row": b[2] + 1, "End Row": b[3] + 1, "Start Column": b[4] + 1,
                   "End Column": b[5] + 1, "Start Slice": b[0] + 1, "End Slice": b[1] + 1}]).to_csv(
        base / "boxes.csv", index=False)
    pd.DataFrame({"patient_id": list(PIDS), "dataset": "duke", "site": "HOSP", "pcr": [1, 0, 1, 0, 1],
                  "tumor_subtype": "luminal", "age": 50}).to_csv(base / "clinical.csv", index=False)
    return {"base": base, "root": root, "masks": masks, "info": info, "seg": seg, "seg_box": seg_box}


def _box(row: pd.Series) -> tuple[int, ...]:
    return tuple(int(v) for v in str(row["tumour_box"]).split(";"))


def test_every_source_gives_the_right_box_and_is_recorded(site: dict, tmp_path: Path) -> None:
    res = run_prepare(site["root"], site["base"] / "clinical.csv", tmp_path / "c", CFG,
                      boxes=site["base"] / "boxes.csv", masks=site["masks"], progress=False)
    assert sorted(res.processed) == sorted(PIDS) and res.skipped == []
    assert not any("seg.dcm" in d["file"] for d in res.ignored_files)  # the SEG was used, not ignored
    man = read_manifest(tmp_path / "c").set_index("patient_id")
    truth = {p: site["info"][p]["box"] for p in PIDS}
    assert man.loc["CSV_PT", "box_source"] == f"box:{site['base'] / 'boxes.csv'}"
    assert _box(man.loc["CSV_PT"]) == truth["CSV_PT"]
    for p, name in (("Breast_MRI_007", "duke_007.nii.gz"), ("NIFTI_PT", "nifti_pt.nii.gz")):
        assert man.loc[p, "box_source"] == f"nifti:{site['masks'] / name}"
        got = _box(man.loc[p])
        assert max(abs(g - t) for g, t in zip(got, truth[p])) <= 1, (p, got, truth[p])  # another grid
    assert man.loc["SEG_PT", "box_source"] == f"seg:{site['seg']}"
    assert _box(man.loc["SEG_PT"]) == site["seg_box"]
    assert man.loc["AUTO_PT", "box_source"] == "auto:enhancement-v1"
    auto = _box(man.loc["AUTO_PT"])
    assert box_iou(auto, truth["AUTO_PT"]) > 0.4, (auto, truth["AUTO_PT"])
    kin = pd.read_csv(tmp_path / "c" / "kinetics.csv").set_index("patient_id")
    assert kin.loc["AUTO_PT", "kinetic_region"] == "auto_box" and kin.loc["CSV_PT", "kinetic_region"] == "tumour_box"


def test_auto_ignores_annotations_and_annotation_requires_one(site: dict, tmp_path: Path) -> None:
    auto = PrepConfig(shape=(12, 12, 12), spacing_mm=3.0, localisation="auto")
    ann = PrepConfig(shape=(12, 12, 12), spacing_mm=3.0, localisation="annotation")
    assert len({CFG.hash(), auto.hash(), ann.hash()}) == 3  # the prep hash covers the method
    res = run_prepare(site["root"], site["base"] / "clinical.csv", tmp_path / "a", auto,
                      boxes=site["base"] / "boxes.csv", progress=False)
    man = read_manifest(tmp_path / "a")
    assert set(man["box_source"]) == {"auto:enhancement-v1"} and len(res.processed) == len(PIDS)
    res = run_prepare(site["root"], site["base"] / "clinical.csv", tmp_path / "b", ann,
                      boxes=site["base"] / "boxes.csv", progress=False)
    assert sorted(res.processed) == ["CSV_PT", "SEG_PT"]  # the box table and the SEG in the tree
    reasons = {s["patient"]: s["reason"] for s in res.skipped}
    assert "no tumour box for AUTO_PT" in reasons["AUTO_PT"] and "localisation='annotation'" in reasons["AUTO_PT"]
    with pytest.raises(ValueError, match="localisation"):
        run_prepare(site["root"], None, tmp_path / "x", PrepConfig(localisation="nearest"), progress=False)


def test_cli_prepare_works_out_of_the_box(site: dict, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    args = ["prepare", "--dicom", str(site["root"]), "--clinical", str(site["base"] / "clinical.csv"),
            "--out", str(out), "--no-progress"]
    assert fedpcr_main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["processed"]) == sorted(PIDS) and report["skipped"] == []
    assert read_prep_hash(out) == PrepConfig().hash()
    assert read_prep_config(out)["config"]["localisation"] == "annotation_or_auto"
    man = read_manifest(out).set_index("patient_id")
    assert man.loc["SEG_PT", "box_source"].startswith("seg:")  # found in the tree with no flag at all
    assert man.loc["NIFTI_PT", "box_source"] == "auto:enhancement-v1"  # no --masks given
