"""Configs: stable hashes, strict loading, the clinical encoding's fixed scaling."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from common.config import PrepConfig, TrainConfig, from_dict, load_yaml
from common.hashing import canonical_json, stable_hash
from common.models.config import ModelConfig, preset
from common.schema import MODEL_CLINICAL_FEATURES, encode_clinical


def test_hash_is_stable_across_processes() -> None:
    """The preprocessing hash is a function of the config alone (a fresh interpreter agrees)."""
    code = "from common.config import PrepConfig; print(PrepConfig().hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == PrepConfig().hash()


def test_hash_changes_with_any_field_and_matches_canonical_json() -> None:
    base = PrepConfig()
    assert base.hash() != PrepConfig(spacing_mm=1.0).hash()
    assert base.hash() != PrepConfig(channels=("pre", "post1")).hash()
    # list vs tuple spelling of the same config hashes the same
    assert from_dict(PrepConfig, {"shape": [32, 32, 32]}).hash() == base.hash()
    import hashlib

    # the canonical JSON of the fields; ``visits`` at its default stays out (caches prepared before it keep their hash)
    fields = dataclasses.asdict(base)
    assert fields.pop("visits") == ("pre",)
    assert base.hash() == hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]
    assert base.hash() != PrepConfig(visits=("pre", "early")).hash()
    assert json.loads(canonical_json(base))["spacing_mm"] == 2.0


def test_unknown_key_is_named(tmp_path) -> None:
    path = tmp_path / "prep.yaml"
    path.write_text("spacing-mm: 1.5\nshpae: [8, 8, 8]\n")
    with pytest.raises(ValueError, match="shpae") as info:
        load_yaml(PrepConfig, path)
    assert str(path) in str(info.value)


def test_yaml_with_dashes_loads(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("prox-mu: 0.01\nepochs: 3\n")
    cfg = load_yaml(TrainConfig, path)
    assert cfg.prox_mu == 0.01 and cfg.epochs == 3 and cfg.lr == TrainConfig().lr


def test_train_config_refuses_unknown_choices_naming_field_and_file(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("loss: wbce\nepochs: 3\n")
    with pytest.raises(ValueError, match="TrainConfig.loss: unknown value 'wbce'") as info:
        load_yaml(TrainConfig, path)
    assert str(path) in str(info.value)
    for field, bad in [("optimizer", "sgd"), ("lr_schedule", "step"), ("threshold_rule", "f1"), ("device", "gpu")]:
        with pytest.raises(ValueError, match=f"TrainConfig.{field}: unknown value '{bad}'"):
            TrainConfig(**{field: bad})
    assert TrainConfig(device="cuda:1").device == "cuda:1"  # a GPU index is accepted


def test_federated_train_config_refuses_lr_schedule() -> None:
    """An epoch schedule cannot apply to rounds of local epochs, so the coordinator refuses it instead of ignoring it."""
    from server.config import FederationConfig

    assert FederationConfig(train_config=json.dumps({"lr": 1e-3})).train().lr == 1e-3
    with pytest.raises(ValueError, match="train-config: lr_schedule 'cosine'"):
        FederationConfig(train_config=json.dumps({"lr_schedule": "cosine"})).train()
    with pytest.raises(ValueError, match="train-config: TrainConfig.loss"):
        FederationConfig(train_config=json.dumps({"loss": "hinge"})).train()


def test_model_presets() -> None:
    assert preset("paper").depth >= 18
    assert preset("small", norm="instance").norm == "instance"
    assert ModelConfig().hash() != preset("paper").hash()
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")


def test_encode_clinical_fixed_scaling_and_missing_indicators() -> None:
    table = pd.DataFrame(
        {"age": [60.0, np.nan], "er": [1, np.nan], "subtype": ["triple_negative", np.nan], "grade": [3, 1]}
    )
    values, present = encode_clinical(table)
    j = {n: i for i, n in enumerate(MODEL_CLINICAL_FEATURES)}
    assert values[0, j["age"]] == pytest.approx(1.0)  # (60 - 50) / 10
    assert present[1, j["age"]] == 0 and values[1, j["age"]] == 0
    assert values[0, j["subtype_triple_negative"]] == 1 and values[0, j["subtype_luminal"]] == 0
    assert present[1, j["subtype_luminal"]] == 0
    assert values[0, j["grade"]] == pytest.approx(1.0) and values[1, j["grade"]] == pytest.approx(-1.0)
    assert present[:, j["pr"]].sum() == 0  # column absent -> missing everywhere
    assert stable_hash({"a": 1}) == stable_hash({"a": 1})


@pytest.mark.parametrize("rule,weight,expected", [("youden", 0.8, 0.5), ("weighted_youden", 0.8, 0.8)])
def test_one_threshold_rule_for_fit_and_federated_counts(rule: str, weight: float, expected: float) -> None:
    """``threshold_rule`` means the same w in centralised fits and in the server's summed-count threshold."""
    import numpy as np

    from common.metrics_counts import THRESHOLD_GRID, threshold_counts
    from common.train import operating_threshold
    from server.aggregation import threshold_from_counts

    cfg = TrainConfig(threshold_rule=rule, youden_weight=weight)
    assert cfg.threshold_weight() == expected
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400).astype(float)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, 400))))
    fed = threshold_from_counts(np.asarray(threshold_counts(y, s, THRESHOLD_GRID)), cfg.threshold_weight())
    central = operating_threshold(y, s, cfg)
    step = float(np.max(np.diff(THRESHOLD_GRID)))
    assert abs(fed - central) <= 2 * step + 1e-9, (fed, central)
