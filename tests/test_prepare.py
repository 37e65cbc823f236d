"""``fedpcr prepare`` on the embedded cohort (simulation.cohort), checked against the generator's truth.csv."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.cli import main as fedpcr_main
from common.config import PrepConfig
from common.data import load_cache
from common.preprocess.dicom import group_patients, list_files, scan_files, select_series
from common.preprocess.pipeline import run_prepare
from common.site_cache import volume_path

SITES = ("DUKE", "AAI", "ISPY1_AAB")
CFG = PrepConfig(channels=("pre", "post1", "sub1", "t2"), shape=(24, 24, 24), spacing_mm=2.0, crop="tumour")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulation.cohort import write_cohort

    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, sites=SITES, patients_per_site=4, seed=3, scale=0.15, t2=True, early_visit=True, workers=2,
                 progress=False)
    return out


@pytest.fixture(scope="module")
def truth(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "truth.csv", dtype={"study_date": str}).set_index("patient_id")


def _clinical(site_dir: Path) -> Path:
    return next(p for p in site_dir.iterdir() if p.name.startswith("clinical."))


@pytest.fixture(scope="module")
def caches(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for site in SITES:
        cache = tmp_path_factory.mktemp(f"cache_{site}")
        res = run_prepare(cohort / site / "dicom", _clinical(cohort / site), cache, CFG,
                          boxes=cohort / site / "Annotation_Boxes.xlsx", workers=2, progress=False)
        assert not res.skipped, res.skipped
        out[site] = cache
    return out


def test_manifest_matches_truth(caches: dict[str, Path], truth: pd.DataFrame) -> None:
    for site, cache in caches.items():
        man = pd.read_csv(cache / "manifest.csv", dtype={"patient_id": str}).set_index("patient_id")
        expect = truth[truth["site"] == site]
        assert sorted(man.index) == sorted(expect.index)
        for pid, row in man.iterrows():
            t = expect.loc[pid]
            names = row["phases"].split(";")
            assert len(names) == int(t["n_phases"])
            assert names == ["pre"] + [f"post{k}" for k in range(1, len(names))]
            times = [float(x) for x in str(row["phase_times"]).split(";")]
            assert np.allclose(times, [float(x) for x in str(t["phase_times"]).split(";")], atol=1.0)
            assert row["shape"] == "24x24x24" and row["spacing"] == "2x2x2"
            assert int(row["label"]) == int(t["pcr"])
            assert row["view"] == t["view"] and row["model"] == t["model"]
            assert int(row["t2_present"]) == int(isinstance(t["t2_series"], str) and t["t2_series"] != "")
            # I-SPY-style sites: not every patient has the early visit (simulation.early_visit)
            assert ("earliest of 2 studies" if int(t["early_visit"]) else "single study") in row["series_choice"]
            vol = np.load(cache / row["volume"])
            assert vol.dtype == np.float16 and vol.shape == (4, 24, 24, 24)


def test_phase_series_and_visit_match_truth(cohort: Path, truth: pd.DataFrame) -> None:
    for site in SITES:
        heads, ignored, _ = scan_files(list_files(cohort / site / "dicom"))
        assert not ignored
        for pid, hs in group_patients(heads).items():
            sel = select_series(pid, hs)
            t = truth.loc[pid]
            assert sel.study.date == str(t["study_date"])  # the pre-treatment (earliest) visit
            if t["phase_series"] == "single-series":
                assert len({p.series_uid for p in sel.phases}) == 1
            else:  # Duke: one series per phase, in the order the generator wrote them
                assert [p.description for p in sel.phases] == t["phase_series"].split(";")
            assert (sel.t2.description if sel.t2 else "") == (t["t2_series"] if isinstance(t["t2_series"], str) else "")


def test_tumour_at_crop_centre(caches: dict[str, Path]) -> None:
    for cache in caches.values():
        man = pd.read_csv(cache / "manifest.csv", dtype={"patient_id": str})
        for rel in man["volume"]:
            sub = np.load(cache / rel)[2].astype(np.float32)
            centre = sub[9:15, 9:15, 9:15].mean()
            shell = np.ones(sub.shape, bool)
            shell[3:-3, 3:-3, 3:-3] = False
            assert centre > sub[shell].mean() + 0.5, rel


def test_hash_is_canonical_and_cache_loads(caches: dict[str, Path]) -> None:
    # independent recomputation of the machine-independent hash: sha256 of the sorted-key JSON
    # of the config's fields; ``visits`` at its default ("pre",) stays out (PrepConfig.hash: older caches keep theirs)
    fields = dataclasses.asdict(CFG)
    assert fields.pop("visits") == ("pre",)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    expect = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert CFG.hash() == expect
    for site, cache in caches.items():
        prep = json.loads((cache / "prep_config.json").read_text())
        assert prep["hash"] == expect and PrepConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in prep["config"].items()}).hash() == expect
        sc = load_cache(cache)
        assert sc.prep_hash == expect and len(sc.ids) == 4
        rep = json.loads((cache / "report.json").read_text())
        assert rep["prep_hash"] == expect and sorted(rep["processed"]) == sorted(sc.ids)
        clin = pd.read_csv(cache / "clinical.csv", dtype={"patient_id": str})
        assert sorted(clin["patient_id"]) == sorted(sc.ids)
        assert set(clin["site"]) == {site}


def test_kinetics(caches: dict[str, Path], truth: pd.DataFrame) -> None:
    for cache in caches.values():
        kin = pd.read_csv(cache / "kinetics.csv", dtype={"patient_id": str}).set_index("patient_id")
        man = pd.read_csv(cache / "manifest.csv", dtype={"patient_id": str})
        assert sorted(kin.index) == sorted(man["patient_id"])
        for pid, k in kin.iterrows():
            times = [float(x) for x in str(truth.loc[pid, "phase_times"]).split(";")]
            assert k["time_to_peak"] in times[1:]
            assert k["early_pe"] > 20.0 and k["max_pe"] >= k["early_pe"] - 1e-9
            assert k["n_phases"] == len(times) and k["kinetic_region"] == "tumour_box"


def test_incremental_and_cli(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = "ISPY1_AAB"
    args = ["prepare", "--dicom", str(cohort / site / "dicom"), "--clinical", str(_clinical(cohort / site)),
            "--boxes", str(cohort / site / "Annotation_Boxes.xlsx"), "--out", str(tmp_path / "c"), "--no-progress"]
    assert fedpcr_main(args) == 0
    first = json.loads((tmp_path / "c" / "report.json").read_text())
    assert len(first["processed"]) == 4 and first["reused"] == []
    vol = tmp_path / "c" / volume_path(first["processed"][0])
    mtime = vol.stat().st_mtime_ns
    assert fedpcr_main(args + ["--workers", "2"]) == 0
    second = json.loads((tmp_path / "c" / "report.json").read_text())
    assert sorted(second["reused"]) == sorted(first["processed"]) and vol.stat().st_mtime_ns == mtime
    (tmp_path / "prep.yaml").write_text("spacing_mm: 3.0\nshape: [16, 16, 16]\n")
    assert fedpcr_main(args + ["--config", str(tmp_path / "prep.yaml")]) == 0
    third = json.loads((tmp_path / "c" / "report.json").read_text())
    assert third["reused"] == [] and third["prep_hash"] != first["prep_hash"]
    assert np.load(vol).shape == (3, 16, 16, 16)
    assert "prepare: 4 patients in cache" in capsys.readouterr().out


def test_workers_do_not_change_results(cohort: Path, caches: dict[str, Path], tmp_path: Path) -> None:
    site = "ISPY1_AAB"
    run_prepare(cohort / site / "dicom", _clinical(cohort / site), tmp_path, CFG,
                boxes=cohort / site / "Annotation_Boxes.xlsx", workers=1, progress=False)
    a = pd.read_csv(tmp_path / "manifest.csv")
    b = pd.read_csv(caches[site] / "manifest.csv")
    pd.testing.assert_frame_equal(a, b)
    for rel in a["volume"]:
        assert np.array_equal(np.load(tmp_path / rel), np.load(caches[site] / rel))


def test_kinetic_features_hand_computed() -> None:
    from common.preprocess.kinetics import kinetic_features

    times = [0.0, 60.0, 120.0, 180.0]
    curve = [100.0, 200.0, 180.0, 150.0]  # enhancing voxels: peak at 60 s, then washout
    phases = []
    for s in curve:
        v = np.full((4, 4, 4), 100.0)  # background: no enhancement
        v[1:3, 1:3, 1:3] = s
        phases.append(v)
    k = kinetic_features(phases, times)  # whole volume: only the 8 enhancing voxels pass PE >= 50 %
    assert k["n_enhancing"] == 8
    assert k["time_to_peak"] == 60.0 and k["max_pe"] == pytest.approx(100.0)
    assert k["early_pe"] == pytest.approx(100.0) and k["late_pe"] == pytest.approx(50.0)
    assert k["ser"] == pytest.approx((200 - 100) / (150 - 100))
    assert k["uptake_rate"] == pytest.approx(100.0 / 60.0)
    assert k["washout_rate"] == pytest.approx((100.0 - 50.0) / (180.0 - 60.0))


def test_n4_recovers_a_known_bias_field() -> None:
    import SimpleITK as sitk

    from common.preprocess.intensity import body_mask
    from common.preprocess.volume import n4_field, to_array

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 48, 48)], indexing="ij")
    body = (x ** 2 + y ** 2 + z ** 2) < 0.8
    rng = np.random.default_rng(0)
    tissue = np.where(body, 400.0 + 20.0 * rng.standard_normal(body.shape), 5.0)
    field = np.exp(0.35 * x + 0.2 * y)  # smooth multiplicative bias
    img = sitk.GetImageFromArray((tissue * field).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 3.0))
    est = to_array(n4_field(img, body_mask(img)))
    corr = np.corrcoef(np.log(est[body]), np.log(field[body]))[0, 1]
    assert corr > 0.9
    corrected = (tissue * field / est)[body]
    assert corrected.std() / corrected.mean() < 0.5 * (tissue * field)[body].std() / (tissue * field)[body].mean()
