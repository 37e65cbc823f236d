"""Two visits through ``fedpcr prepare`` and the dataset: real DICOM studies on two StudyDates in one patient
folder, a patient with the baseline only, the manifest's visit columns, report.json's note, and the dataset's
visit keys with masking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import PrepConfig
from common.data import PCRDataset, load_cache
from common.preprocess.pipeline import run_prepare
from common.site_cache import read_manifest
from tests.dicom_factory import Grid, write_clinical, write_patient

GRID = Grid(slices=12, rows=28, cols=28, slice_mm=5.0, pixel_mm=3.5)
CFG = PrepConfig(shape=(8, 12, 12), spacing_mm=4.0, visits=("pre", "early"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("visits")
    root = base / "dicom"
    # TWO: baseline + early visit 21 days later with the SAME images (so the early volume must equal the
    # baseline volume exactly: same harmonisation, same crop centre); DIFF: early visit with other images
    write_patient(root, "TWO", grid=GRID, study_date="20200101", tag="v1", seed=3)
    write_patient(root, "TWO", grid=GRID, study_date="20200122", tag="v2", seed=3)
    write_patient(root, "DIFF", grid=GRID, study_date="20210301", tag="v1", seed=4)
    write_patient(root, "DIFF", grid=GRID, study_date="20210330", tag="v2", seed=9)
    write_patient(root, "ONE", grid=GRID, study_date="20200505", tag="v1", seed=5)
    mapping = write_clinical(base / "clin.csv", {"TWO": "yes", "DIFF": "no", "ONE": "no"})
    out = base / "cache"
    res = run_prepare(root, base / "clin.csv", out, CFG, clinical_format="csv", mapping=mapping, progress=False)
    return {"base": base, "root": root, "mapping": mapping, "out": out, "res": res}


def test_manifest_records_each_visit_date_and_days(site: dict) -> None:
    assert site["res"].processed == ["DIFF", "ONE", "TWO"], site["res"].skipped  # a missing visit is no error
    man = read_manifest(site["out"]).set_index("patient_id")
    assert str(man.loc["TWO", "study_date"]) == "20200101"
    assert int(man.loc["TWO", "study_date_early"]) == 20200122 and int(man.loc["TWO", "days_early"]) == 21
    assert int(man.loc["DIFF", "study_date_early"]) == 20210330 and int(man.loc["DIFF", "days_early"]) == 29
    assert man.loc["ONE", ["volume_early", "study_date_early", "days_early"]].isna().all()
    for pid in ("TWO", "DIFF"):
        assert (site["out"] / man.loc[pid, "volume_early"]).is_file()
        assert man.loc[pid, "volume_early"] != man.loc[pid, "volume"]
    report = json.loads((site["out"] / "report.json").read_text())
    assert [(m["patient"], m["visit"]) for m in report["missing_visits"]] == [("ONE", "early")]
    assert "only one visit" in report["missing_visits"][0]["reason"]


def test_early_volume_has_the_baselines_preprocessing_and_crop(site: dict) -> None:
    man = read_manifest(site["out"]).set_index("patient_id")
    base = np.load(site["out"] / man.loc["TWO", "volume"])
    early = np.load(site["out"] / man.loc["TWO", "volume_early"])
    assert early.shape == base.shape == (3, 8, 12, 12)
    np.testing.assert_array_equal(early, base)  # identical images on both dates -> identical volumes
    other = np.load(site["out"] / man.loc["DIFF", "volume_early"])
    assert not np.array_equal(other, np.load(site["out"] / man.loc["DIFF", "volume"]))


def test_rerun_reuses_and_keeps_the_early_volumes(site: dict) -> None:
    res = run_prepare(site["root"], site["base"] / "clin.csv", site["out"], CFG, clinical_format="csv",
                      mapping=site["mapping"], progress=False)
    assert sorted(res.reused) == ["DIFF", "ONE", "TWO"]
    man = read_manifest(site["out"]).set_index("patient_id")
    assert (site["out"] / man.loc["TWO", "volume_early"]).is_file()
    assert [m["patient"] for m in json.loads((site["out"] / "report.json").read_text())["missing_visits"]] == ["ONE"]


def test_default_visits_keep_the_prep_hash_and_write_no_later_volume(site: dict, tmp_path: Path) -> None:
    assert PrepConfig().hash() == PrepConfig(visits=("pre",)).hash() != PrepConfig(visits=("pre", "early")).hash()
    cfg = PrepConfig(shape=(8, 12, 12), spacing_mm=4.0)
    run_prepare(site["root"], site["base"] / "clin.csv", tmp_path / "c", cfg, clinical_format="csv",
                mapping=site["mapping"], progress=False)
    man = read_manifest(tmp_path / "c")
    assert man["volume_early"].isna().all() and len(list((tmp_path / "c" / "volumes").iterdir())) == 3
    cache = load_cache(tmp_path / "c")
    with pytest.raises(ValueError, match=r"holds visits \['pre'\] but the model reads \['pre', 'early'\]"):
        PCRDataset(cache, cache.ids, visits=("pre", "early"))
    item = PCRDataset(cache, cache.ids)[0]  # a pre-only cache serves no visit keys
    assert "image_early" not in item and "early_present" not in item


def test_bad_visits_config_is_refused() -> None:
    from common.preprocess.pipeline import validate_config

    with pytest.raises(ValueError, match="PrepConfig.visits"):
        validate_config(PrepConfig(visits=("early",)))
    with pytest.raises(ValueError, match="PrepConfig.visits"):
        validate_config(PrepConfig(visits=("pre", "week6")))


def test_dataset_yields_visit_keys_and_masks_missing_visits(site: dict) -> None:
    cache = load_cache(site["out"])
    assert cache.visits == ("pre", "early")
    ds = PCRDataset(cache, ["DIFF", "ONE", "TWO"])
    man = cache.manifest
    items = [ds[i] for i in range(3)]
    for pid, item in zip(ds.ids, items):
        assert item["image_early"].shape == item["image"].shape == (3, 8, 12, 12)
        if pid == "ONE":
            assert item["early_present"].item() == 0.0 and item["early_days"].item() == 0.0
            assert torch.count_nonzero(item["image_early"]) == 0
        else:
            expect = np.load(cache.path / man.loc[pid, "volume_early"]).astype(np.float32)
            np.testing.assert_array_equal(item["image_early"].numpy(), expect)
            assert item["early_present"].item() == 1.0
            assert item["early_days"].item() == float(man.loc[pid, "days_early"])
    batch = torch.utils.data.default_collate(items)
    assert batch["early_present"].tolist() == [1.0, 0.0, 1.0] and batch["early_days"].tolist() == [29.0, 0.0, 21.0]
    # augmentation: one draw for both visits (TWO has identical visits, so they stay identical)
    aug = PCRDataset(cache, ["TWO"], augment=True, seed=3)
    for _ in range(3):
        item = aug[0]
        torch.testing.assert_close(item["image_early"], item["image"])
    # a two-visit fusion model runs on the batch and its output depends on the early image
    from common.models import build_model
    from common.models.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=3, visits=("pre", "early"))).eval()
    with torch.no_grad():
        out = model(batch)
        changed = dict(batch, image_early=batch["image_early"] + 1.0)
        out2 = model(changed)
    logits = [o["logit"] if isinstance(o, dict) else o for o in (out, out2)]
    diff = (logits[0] - logits[1]).abs().view(-1)
    assert diff[1] < 1e-6 < diff[0]  # the missing visit (ONE) is masked: its image does not matter


def test_a_lost_early_volume_is_reported_and_masked(site: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(site["out"], copy)
    man = read_manifest(copy).set_index("patient_id")
    (copy / man.loc["DIFF", "volume_early"]).unlink()
    cache = load_cache(copy)
    assert any(i["patient"] == "DIFF" and i["field"] == "volume_early" for i in cache.issues)
    item = PCRDataset(cache, ["DIFF"])[0]
    assert item["early_present"].item() == 0.0 and torch.count_nonzero(item["image_early"]) == 0
