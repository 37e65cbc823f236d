"""Embedded cohort: real DICOM read back by pydicom and SimpleITK, native tables, planted signal, determinism."""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut
from scipy.stats import kruskal, mannwhitneyu
from sklearn.metrics import roc_auc_score

from common.paths import DUKE_CLINICAL, ISPY2_CLINICAL, MAMA_MIA_TABLE
from simulation.cohort import DUKE_SCHEMES, write_cohort
from simulation.cohort_cli import main as synth_main

SITES = ("DUKE", "AAI", "ISPY1_AAB")
N = 8
SCALE = 0.2
#: Cheap sagittal sites (3-4 phases) with many labelled patients, for the label-signal tests.
SIGNAL_SITES = ("ISPY1_AAI", "NACT")


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    rc = synth_main(["--out", str(out), "--sites", *SITES, "--patients-per-site", str(N), "--scale", str(SCALE),
                     "--seed", "7", "--quiet"])
    assert rc == 0
    return out


#: Small cohort with the optional T2 series and early-treatment visit.
EXTRAS = dict(sites=["DUKE", "ISPY1_AAB"], patients_per_site=1, seed=11, scale=SCALE, t2=True, early_visit=True)


@pytest.fixture(scope="session")
def extras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("extras") / "c", **EXTRAS, workers=2, progress=False)


@pytest.fixture(scope="session")
def truth(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "truth.csv", dtype={"tumour_box": str})


def _series_dirs(study: Path) -> list[Path]:
    return sorted(p for p in study.iterdir() if p.is_dir())


def _read_series(folder: Path, headers_only: bool = False) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=headers_only) for f in sorted(folder.glob("*.dcm"))]


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def _volumes(files: list[pydicom.Dataset]) -> dict[int, np.ndarray]:
    """Phase volumes (z, y, x) by TemporalPositionIdentifier, slices ordered by position (not instance)."""
    by_phase: dict[int, list[tuple[float, np.ndarray]]] = defaultdict(list)
    for ds in files:
        pos = float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), _normal(ds)))
        by_phase[int(ds.TemporalPositionIdentifier)].append((pos, apply_modality_lut(ds.pixel_array, ds)))
    return {k: np.stack([a for _, a in sorted(v, key=lambda t: t[0])]) for k, v in by_phase.items()}


def _dce_phases(study: Path, phases: tuple[int, ...] | None = None) -> dict[int, np.ndarray]:
    """DCE phase volumes of a study (all, or only the given TemporalPositionIdentifiers)."""
    files = [pydicom.dcmread(f, defer_size="1 KB") for d in _series_dirs(study) for f in sorted(d.glob("*.dcm"))]
    return _volumes([ds for ds in files if "TemporalPositionIdentifier" in ds
                     and (phases is None or int(ds.TemporalPositionIdentifier) in phases)])


def _boxes(site_dir: Path) -> dict[str, tuple[int, ...]]:
    df = pd.read_excel(site_dir / "Annotation_Boxes.xlsx")
    cols = ["Start Slice", "End Slice", "Start Row", "End Row", "Start Column", "End Column"]
    return {r["Patient ID"]: tuple(int(r[c]) - 1 for c in cols) for _, r in df.iterrows()}  # 1-based -> 0-based


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_layout_and_truth(cohort: Path, truth: pd.DataFrame) -> None:
    assert sorted(truth["site"].unique()) == sorted(SITES)
    assert (truth.groupby("site").size() == N).all()
    assert {"patient_id", "site", "pcr", "subtype", "manufacturer", "view", "n_phases", "phase_times", "phase_series",
            "tumour_box", "signal", "responsiveness", "washout_per_s", "rim"} <= set(truth.columns)
    for site in SITES:
        assert (cohort / site / "Annotation_Boxes.xlsx").is_file()
        assert len(list((cohort / site).glob("clinical.*"))) == 1
    duke = truth[truth.site == "DUKE"].iloc[0]
    parts = Path(duke.study_dir).parts
    assert parts[1] == duke.patient_id and "-NA-MRI BREAST BILATERAL WWO-" in parts[2]
    ispy = truth[truth.site == "AAI"].iloc[0]
    num = ispy.patient_id.split("-")[1]
    assert ispy.patient_id.startswith("ISPY2-") and f"{num}T0-ISPY2MRIT0-" in Path(ispy.study_dir).parts[2]
    series = [p.name for p in _series_dirs(cohort / "AAI" / ispy.study_dir)]
    assert any(".000000-ISPY2 VOLSER uni-lateral cropped original DCE-" in s for s in series)
    # real anchors: labels, receptors and scanners come from the MAMA-MIA table
    mm = pd.read_excel(MAMA_MIA_TABLE, sheet_name="dataset_info").set_index("patient_id")
    for r in truth.itertuples():
        real = mm.loc[r.anchor_id]
        assert r.pcr == real.pcr and r.manufacturer == str(real.manufacturer).strip()
        assert r.view == real.view and (r.age == real.age or (np.isnan(r.age) and np.isnan(real.age)))
    assert set(truth[truth.site == "ISPY1_AAB"].view) == {"sagittal"}


def test_dicom_valid_and_fake_identifiers(cohort: Path, truth: pd.DataFrame) -> None:
    sops = set()
    n_files = 0
    for r in truth.itertuples():
        for study in (cohort / r.site / r.study_dir,):
            for folder in _series_dirs(study):
                paths = sorted(folder.glob("*.dcm"))
                files = [pydicom.dcmread(f, stop_before_pixels=True) for f in paths]
                assert pydicom.dcmread(paths[0]).pixel_array.shape == (files[0].Rows, files[0].Columns)
                for ds in files:
                    n_files += 1
                    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MRImageStorage
                    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
                    sops.add(ds.SOPInstanceUID)
                    assert ds.Modality == "MR" and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
                    assert ds.PatientID == r.patient_id and ds.ClinicalTrialSiteID == r.site
                    assert str(ds.PatientName).startswith("FAKE^") and ds.InstitutionName.startswith("FAKE")
                    assert ds.AccessionNumber.startswith("FAKEACC") and len(ds.PatientBirthDate) == 8
                    assert "FrameOfReferenceUID" in ds and ds.StudyDate and ds.SeriesDate
                    assert float(ds.MagneticFieldStrength) == pytest.approx(r.field_strength)
                assert len({ds.SeriesInstanceUID for ds in files}) == 1
    assert len(sops) == n_files  # unique SOP Instance UIDs
    assert n_files == truth["n_files"].sum()


def test_fast_encoder_equals_pydicom_save_as(cohort: Path, truth: pd.DataFrame) -> None:
    """The per-slice encoder writes exactly the bytes pydicom's own ``save_as`` writes."""
    r = truth.iloc[0]
    for path in list(next(iter(_series_dirs(cohort / r.site / r.study_dir))).glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(path)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == path.read_bytes()


def test_simpleitk_reads_duke_phase_with_planted_geometry(cohort: Path, truth: pd.DataFrame) -> None:
    for r in truth[truth.site == "DUKE"].itertuples():
        study = cohort / "DUKE" / r.study_dir
        dce = [d for d in _series_dirs(study) if "T2" not in d.name and "t2_" not in d.name]
        pre = min(dce, key=lambda d: float(d.name.split("-")[0]))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(pre)))
        img = reader.Execute()
        sz, sy, sx = (float(v) for v in r.spacing.split("x"))
        assert img.GetSpacing() == pytest.approx((sx, sy, sz), abs=1e-3)
        assert img.GetOrigin() == pytest.approx([float(v) for v in r.origin.split(";")], abs=1e-3)
        u = [float(v) for v in r.orientation.split(";")]
        assert img.GetDirection() == pytest.approx((u[0], u[3], 0, u[1], u[4], 0, 0, 0, 1), abs=1e-6)
        assert img.GetSize() == tuple(int(v) for v in reversed(r.shape.split("x")))
        # same voxels as the position-ordered pydicom read
        pyd = _volumes(_read_series(pre))[1]
        assert np.array_equal(sitk.GetArrayFromImage(img), pyd)


def test_phase_times_and_vendor_naming(cohort: Path, truth: pd.DataFrame) -> None:
    ge = {s for sch in DUKE_SCHEMES["GE"] for s in (sch[0],)}
    siemens = {s for sch in DUKE_SCHEMES["SIEMENS"] for s in (sch[0],)}
    for r in truth.itertuples():
        times = [float(t) for t in r.phase_times.split(";")]
        files = [ds for d in _series_dirs(cohort / r.site / r.study_dir) for ds in _read_series(d, True)
                 if "TemporalPositionIdentifier" in ds]
        by_tpi: dict[int, set] = defaultdict(set)
        acq: dict[int, set] = defaultdict(set)
        for ds in files:
            by_tpi[int(ds.TemporalPositionIdentifier)].add(float(ds.TriggerTime) / 1000.0)
            t = str(ds.AcquisitionTime)
            acq[int(ds.TemporalPositionIdentifier)].add(int(t[:2]) * 3600 + int(t[2:4]) * 60 + float(t[4:]))
        assert sorted(by_tpi) == list(range(1, len(times) + 1))
        assert [by_tpi[k].pop() for k in sorted(by_tpi)] == pytest.approx(times)
        starts = [acq[k].pop() for k in sorted(acq)]
        assert [s - starts[0] for s in starts] == pytest.approx(times, abs=1e-3)
        descs = {ds.SeriesDescription for ds in files}
        if r.site == "DUKE":
            assert len({ds.SeriesInstanceUID for ds in files}) == r.n_phases  # one series per phase
            assert descs == set(r.phase_series.split(";"))
            pre = r.phase_series.split(";")[0]
            assert pre in (siemens if r.manufacturer == "SIEMENS" else ge)
            expected = "SIEMENS" if r.manufacturer == "SIEMENS" else "GE MEDICAL SYSTEMS"
            assert {ds.Manufacturer for ds in files} == {expected}
        else:
            assert len({ds.SeriesInstanceUID for ds in files}) == 1 and r.phase_series == "single-series"
            nz = int(r.shape.split("x")[0])
            insts = sorted(int(ds.InstanceNumber) for ds in files if int(ds.TemporalPositionIdentifier) == 2)
            assert insts == list(range(nz + 1, 2 * nz + 1))  # phases are consecutive instance blocks
        if r.view == "sagittal":
            assert [float(v) for v in files[0].ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]


def test_instance_numbers_not_position_ordered_somewhere(cohort: Path, truth: pd.DataFrame) -> None:
    mismatched = 0
    for r in truth.itertuples():
        for d in _series_dirs(cohort / r.site / r.study_dir):
            files = [ds for ds in _read_series(d, True) if int(getattr(ds, "TemporalPositionIdentifier", 1)) == 1]
            by_inst = [float(np.dot(np.array(ds.ImagePositionPatient, float), _normal(ds)))
                       for ds in sorted(files, key=lambda ds: int(ds.InstanceNumber))]
            mismatched += by_inst != sorted(by_inst)
    assert mismatched > 0


def test_boxes_match_truth_and_fit_the_volume(cohort: Path, truth: pd.DataFrame) -> None:
    for site in SITES:
        boxes = _boxes(cohort / site)
        sub = truth[truth.site == site]
        assert set(boxes) == set(sub.patient_id)
        for r in sub.itertuples():
            b = boxes[r.patient_id]
            assert b == tuple(int(v) for v in r.tumour_box.split(";"))
            ph = _dce_phases(cohort / site / r.study_dir, (1,))
            z0, z1, y0, y1, x0, x1 = b
            shape = ph[1].shape
            assert 0 <= z0 <= z1 < shape[0] and 0 <= y0 <= y1 < shape[1] and 0 <= x0 <= x1 < shape[2]
            # tumour size 10-42 mm along each axis
            sz, sy, sx = (float(v) for v in r.spacing.split("x"))
            extent = [(y1 - y0 + 1) * sy, (x1 - x0 + 1) * sx]
            assert all(5 <= e <= 50 for e in extent)


def test_early_visit_and_t2(extras: Path) -> None:
    truth = pd.read_csv(extras / "truth.csv")
    for r in truth.itertuples():
        study0 = extras / r.site / r.study_dir
        study1 = extras / r.site / r.early_visit_dir
        assert study0.parent == study1.parent and study0 != study1
        d0 = _read_series(_series_dirs(study0)[0])[0]
        d1 = _read_series(_series_dirs(study1)[0])[0]
        assert d1.StudyDate > d0.StudyDate and d1.StudyInstanceUID != d0.StudyInstanceUID
        assert d1.FrameOfReferenceUID != d0.FrameOfReferenceUID and d1.PatientID == d0.PatientID
        t2 = [d for d in _series_dirs(study0) if d.name.split("-", 1)[1].startswith(r.t2_series)]
        assert len(t2) == 1 and "TemporalPositionIdentifier" not in _read_series(t2[0])[0]
        assert len(_series_dirs(study1)) == len(_series_dirs(study0))
        # the early-visit tumour is no larger than allowed by the planted shrinkage
        b0 = [int(v) for v in r.tumour_box.split(";")]
        b1 = [int(v) for v in r.early_visit_box.split(";")]
        assert (b1[3] - b1[2]) <= (b0[3] - b0[2]) * max(r.early_visit_shrink, 1.0) + 2


def test_native_clinical_tables(cohort: Path, truth: pd.DataFrame) -> None:
    # Duke: the real 3 header rows, sheet Data, coded pCR (1 = pCR, 2 = not)
    real = openpyxl.load_workbook(DUKE_CLINICAL, read_only=True)["Data"]
    ours = openpyxl.load_workbook(cohort / "DUKE" / "clinical.xlsx", read_only=True)
    assert ours.sheetnames == openpyxl.load_workbook(DUKE_CLINICAL, read_only=True).sheetnames
    head_real = [r for r in real.iter_rows(min_row=1, max_row=3, values_only=True)]
    rows = list(ours["Data"].iter_rows(values_only=True))
    assert rows[:3] == head_real
    duke = truth[truth.site == "DUKE"].set_index("patient_id")
    assert sorted(r[0] for r in rows[3:]) == sorted(duke.index)
    for r in rows[3:]:
        assert r[59] == (1 if duke.loc[r[0], "pcr"] == 1 else 2)
        assert r[2] == (2 if duke.loc[r[0], "manufacturer"] == "SIEMENS" else 0)
    # I-SPY2: TCIA layout, Patient_ID = 6 digits of the DICOM PatientID
    i2 = pd.read_excel(cohort / "AAI" / "clinical.xlsx")
    assert list(i2.columns) == list(pd.read_excel(ISPY2_CLINICAL, nrows=1).columns)
    aai = truth[truth.site == "AAI"]
    assert sorted(f"ISPY2-{p}" for p in i2.Patient_ID) == sorted(aai.patient_id)
    assert dict(zip(i2.Patient_ID.map(lambda p: f"ISPY2-{p}"), i2.pCR)) == dict(zip(aai.patient_id, aai.pcr))
    # I-SPY1: MAMA-MIA dataset_info columns as CSV
    i1 = pd.read_csv(cohort / "ISPY1_AAB" / "clinical.csv")
    assert list(i1.columns) == list(pd.read_excel(MAMA_MIA_TABLE, sheet_name="dataset_info", nrows=1).columns)
    assert set(i1.patient_id) == set(truth[truth.site == "ISPY1_AAB"].patient_id)


def test_deterministic_for_a_seed(extras: Path, tmp_path: Path) -> None:
    """Same parameters -> byte-identical tree (DICOM, workbooks, CSVs, json), whatever the worker count."""
    again = write_cohort(tmp_path / "again", **EXTRAS, workers=1, progress=False)
    assert _tree_hash(again) == _tree_hash(extras)
    other = write_cohort(tmp_path / "other", **(EXTRAS | {"seed": 12, "t2": False, "early_visit": False}),
                         workers=1, progress=False)
    assert _tree_hash(other / "DUKE" / "dicom") != _tree_hash(extras / "DUKE" / "dicom")


def test_site_nuisance_measurable(cohort: Path, truth: pd.DataFrame) -> None:
    """Background (air) intensity in the pre-contrast image differs between sites."""
    corners: dict[str, list[float]] = defaultdict(list)
    for r in truth.itertuples():
        pre = _dce_phases(cohort / r.site / r.study_dir)[1]
        corners[r.site].append(float(np.median(pre[:, :4, :4])))
    assert mannwhitneyu(corners["AAI"], corners["ISPY1_AAB"]).pvalue < 0.01, corners
    assert kruskal(*corners.values()).pvalue < 0.01, corners


def _early_enhancement(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent feature: mean(post1)/mean(pre) - 1 inside the Annotation_Boxes box, read via pydicom."""
    truth = pd.read_csv(out / "truth.csv")
    feats, labels = [], []
    for site in truth.site.unique():
        boxes = _boxes(out / site)
        for r in truth[truth.site == site].itertuples():
            ph = _dce_phases(out / site / r.study_dir, (1, 2))
            z0, z1, y0, y1, x0, x1 = boxes[r.patient_id]
            sl = (slice(z0, z1 + 1), slice(y0, y1 + 1), slice(x0, x1 + 1))
            feats.append(ph[2][sl].mean() / ph[1][sl].mean() - 1.0)
            labels.append(r.pcr)
    return np.array(labels), np.array(feats)


@pytest.fixture(scope="session")
def signal_cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    base = tmp_path_factory.mktemp("signal")
    return {s: write_cohort(base / f"s{s}", sites=SIGNAL_SITES, patients_per_site=36, seed=3, scale=SCALE,
                            signal=s, workers=2, progress=False) for s in (1.0, 0.0)}


def test_planted_signal_default_strength(signal_cohorts: dict[float, Path]) -> None:
    y, f = _early_enhancement(signal_cohorts[1.0])
    assert 0 < y.sum() < len(y) and len(y) >= 70
    auc = roc_auc_score(y, f)
    print(f"signal=1: n={len(y)} pcr={y.mean():.2f} early-enhancement AUROC={auc:.3f}")
    assert auc > 0.65


def test_no_signal_at_zero(signal_cohorts: dict[float, Path]) -> None:
    y, f = _early_enhancement(signal_cohorts[0.0])
    auc = roc_auc_score(y, f)
    print(f"signal=0: n={len(y)} pcr={y.mean():.2f} early-enhancement AUROC={auc:.3f}")
    assert abs(auc - 0.5) < 0.15


def test_refuses_to_mix_with_an_earlier_cohort(extras: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(extras, copy)
    with pytest.raises(ValueError, match="already holds a cohort"):
        write_cohort(copy, sites=["ISPY1_AAB"], patients_per_site=1, progress=False)
    write_cohort(copy, sites=["ISPY1_AAB"], patients_per_site=1, seed=11, scale=SCALE, workers=1, progress=False,
                 overwrite=True)
    assert not (copy / "DUKE").exists() and pd.read_csv(copy / "truth.csv").site.tolist() == ["ISPY1_AAB"]


def test_cli_rejects_unknown_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_main(["--out", str(tmp_path / "x"), "--sites", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err


def test_subtype_fallback_follows_the_mama_mia_legend():
    """Receptors decide the subtype; MAMA-MIA's label is only a fallback and ambiguous codes stay unknown."""
    import pandas as pd

    from simulation.cohort_sites import _subtype

    nan = float("nan")
    assert _subtype(pd.Series({"hr": 1, "her2": 0, "tumor_subtype": "luminal_b"})) == "luminal"
    assert _subtype(pd.Series({"hr": nan, "her2": nan, "tumor_subtype": "luminal_b"})) == "luminal_her2"
    assert _subtype(pd.Series({"hr": nan, "her2": nan, "tumor_subtype": "luminal_a"})) == "luminal"
    assert _subtype(pd.Series({"hr": nan, "her2": nan, "tumor_subtype": "her2_enriched"})) is None
