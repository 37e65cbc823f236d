"""The semi-synthetic early-visit experiment: its preset (I-SPY-style sites, both visits cached, an I-SPY2
site held out), its folds (the held-out institution never trains) and the pre+early arm end to end on tiny
caches with an early visit for some patients."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import PrepConfig
from common.site_cache import MANIFEST, volume_path
from simulation.cohort_sites import KNOWN_SITES
from simulation.experiment_config import preset
from tests.cache_factory import make_cache

SITES = ("AAI", "AAQ", "ISPY1_AAB")
PREP = PrepConfig(shape=(12, 12, 12), visits=("pre", "early"))


def test_presets_hold_out_an_ispy2_site_and_cache_both_visits() -> None:
    for name in ("early-visit", "early-visit-quick"):
        cfg = preset(name)
        assert cfg.early_visit and cfg.prep.visits == ("pre", "early")
        assert set(cfg.cohort_sites) == set(SITES) and cfg.heldout == ("AAQ",)
        assert KNOWN_SITES["AAQ"].collection == "ISPY2"
        assert {"pooled", "pooled-early"} <= set(cfg.arms)
    assert preset("early-visit-quick").patients_per_site == 16 and preset("early-visit-quick").seeds == (0,)
    from simulation.run import build_parser, experiment_config

    assert experiment_config(build_parser().parse_args(["--experiment", "early-visit", "--quick"])).name == \
        "early-visit-quick"


def _add_early_visits(cache: Path, rng: np.random.Generator) -> None:
    """An early-treatment volume (the baseline scaled down) for about 3 in 4 patients, 21 days later."""
    man = pd.read_csv(cache / MANIFEST, dtype={"patient_id": str}, keep_default_na=False)
    vols, dates, days = [], [], []
    for pid, rel in zip(man["patient_id"], man["volume"]):
        if rng.random() < 0.75:
            base = np.load(cache / rel)
            rel_e = volume_path(pid, "early")
            np.save(cache / rel_e, (base * 0.7).astype(np.float16))
            vols.append(rel_e), dates.append("20200122"), days.append("21")
        else:
            vols.append(""), dates.append(""), days.append("")
    man["volume_early"], man["study_date_early"], man["days_early"] = vols, dates, days
    man.to_csv(cache / MANIFEST, index=False)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    from simulation.folds import load_sites

    root = tmp_path_factory.mktemp("ev")
    caches = {}
    for k, s in enumerate(SITES):
        caches[s] = make_cache(root, s, n=24, seed=k, prep=PREP)
        _add_early_visits(caches[s], np.random.default_rng(k))
    cfg = preset("early-visit-quick", epochs=1, n_boot=20, prep=PREP)
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=8))
    return load_sites(caches, cfg), cfg


def test_folds_keep_the_heldout_site_out_of_training(sites: tuple) -> None:
    from simulation.folds import make_folds

    data, cfg = sites
    folds = make_folds(data, cfg)
    assert [f.name for f in folds] == ["heldout-AAQ"]
    assert folds[0].heldout == ["AAQ"] and "AAQ" not in folds[0].train
    assert sorted(folds[0].train) == ["AAI", "ISPY1_AAB"]


def test_pre_and_early_arms_train_without_the_heldout_site(sites: tuple, tmp_path: Path) -> None:
    from simulation.arms import _model_cfg, run_arm
    from simulation.folds import make_folds

    data, cfg = sites
    fold = make_folds(data, cfg)[0]
    assert _model_cfg(cfg, "pooled-early").visits == ("pre", "early") and _model_cfg(cfg, "fusion").visits == ("pre",)
    for arm_name in ("pooled", "pooled-early"):
        (arm,) = run_arm(cfg, data, fold, arm_name, 0, tmp_path)
        assert arm.method == arm_name and "AAQ" not in arm.train_sites and "AAQ" not in arm.train_patients
        held = arm.predictions["AAQ"]  # the held-out institution's test set
        assert len(held["ids"]) == len(data["AAQ"].ids) and all(i.startswith("AAQ/") for i in held["ids"])
        assert np.isfinite(held["score"]).all()
        assert ("pre+early" if arm_name == "pooled-early" else "visits pre") in " ".join(arm.notes)
