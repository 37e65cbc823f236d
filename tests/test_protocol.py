"""The hospital <-> coordinator contract (common/protocol.py): round-config parsing, count (de)serialisation,
error codes, the run-config subset a hospital reads, and the package boundaries around it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from common import protocol as P
from common.metrics_counts import THRESHOLD_GRID, threshold_counts

ROOT = Path(__file__).resolve().parents[1]


def test_round_config_round_trip_and_defaults() -> None:
    rc = P.RoundConfig(server_round=3, prep_hash="p", model_hash="m", local_epochs=2, lr=0.01,
                       proximal_mu=0.1, local_norm=True, eval_split="test", update_encoding="fp16", dp=True,
                       dp_epsilon=3.0, dp_delta=1e-5,
                       dp_max_grad_norm=1.0, dp_noise_multiplier=0.0, dp_rounds=4, eval_logit_centre=-0.1,
                       eval_logit_scale=20.0)
    sent = rc.to_dict()
    assert set(sent) == set(P.ROUND_CONFIG_KEYS)
    assert P.RoundConfig.from_dict(sent) == rc
    # keys not sent fall back: local epochs / lr = the site's own settings (None), no proximal term
    bare = P.RoundConfig.from_dict({P.SERVER_ROUND: 1})
    assert bare.local_epochs is None and bare.lr is None and bare.proximal_mu == 0.0 and bare.eval_split == "val"
    assert P.LOCAL_EPOCHS not in bare.to_dict()


@pytest.mark.parametrize("data, key", [
    ({"prox-mu": 0.1}, "prox-mu"),  # the old spelling is gone: Flower's FedProx sends "proximal-mu"
    ({P.SERVER_ROUND: 1, "dp-noise": 1.0}, "dp-noise"),  # an instruction the site does not understand
    ({P.LOCAL_EPOCHS: "2"}, P.LOCAL_EPOCHS),
    ({P.LOCAL_EPOCHS: 0}, P.LOCAL_EPOCHS),
    ({P.LOCAL_NORM: 1}, P.LOCAL_NORM),
    ({P.EVAL_SPLIT: "train"}, P.EVAL_SPLIT),
    ({P.PROXIMAL_MU: -1.0}, P.PROXIMAL_MU),
    ({P.SERVER_ROUND: True}, P.SERVER_ROUND),
])
def test_round_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(P.ProtocolError) as err:
        P.RoundConfig.from_dict(data)
    assert key in str(err.value) and err.value.code == P.BAD_CONFIG


def test_counts_round_trip_against_threshold_counts() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    counts = threshold_counts(y, s, THRESHOLD_GRID)
    lists = P.counts_to_lists(counts, P.TEST_PREFIX)
    assert set(lists) == {P.TEST_PREFIX + k for k in P.COUNT_KEYS}
    assert all(isinstance(v, int) for col in lists.values() for v in col)
    # hand-checked column meaning at the lowest threshold: everyone positive -> TP = n_pos, FP = n_neg
    assert lists["test-tp"][0] == int(y.sum()) and lists["test-fp"][0] == int((y == 0).sum())
    back = P.counts_from_lists(lists, P.TEST_PREFIX, length=len(THRESHOLD_GRID))
    np.testing.assert_array_equal(back, counts)
    assert back.dtype == np.int64


@pytest.mark.parametrize("change, key", [
    (lambda m: m.pop("fn"), "fn"),
    (lambda m: m.__setitem__("fp", m["fp"][:-1]), "fp"),
    (lambda m: m.__setitem__("tn", [-1] + m["tn"][1:]), "tn"),
    (lambda m: m.__setitem__("tp", [0.5] * len(m["tp"])), "tp"),
    (lambda m: m.__setitem__("tp", 3), "tp"),
])
def test_counts_from_lists_names_the_bad_key(change, key: str) -> None:
    metrics = P.counts_to_lists(np.ones((4, 4), dtype=np.int64))
    change(metrics)
    with pytest.raises(ValueError, match=repr(key)):
        P.counts_from_lists(metrics)
    with pytest.raises(ValueError, match="'tp'"):
        P.counts_from_lists(P.counts_to_lists(np.ones((4, 4), dtype=np.int64)), length=5)


def test_counts_to_lists_refuses_non_counts() -> None:
    with pytest.raises(ValueError):
        P.counts_to_lists(np.ones((3, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        P.counts_to_lists(-np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError):
        P.counts_to_lists(np.full((3, 4), 0.5))


def test_error_codes_are_distinct_and_described() -> None:
    named = {k: getattr(P, k) for k in P.__all__ if k in ("REFUSED", "BAD_CONFIG", "BAD_MODEL", "SITE_ERROR", "AUDIT_FAILED",
                                                        "APP_NOT_APPROVED", "PRIVACY_BUDGET") or k.startswith("POLICY_")}
    codes = list(named.values())
    assert len(codes) == 17 and len(set(codes)) == len(codes) and set(codes) == set(P.ERROR_CODES)
    assert all(c >= 100 for c in codes)  # Flower's own ErrorCode values are small integers
    assert "refused" in P.describe_error(P.REFUSED)
    assert "epsilon" in P.describe_error(P.PRIVACY_BUDGET)
    assert "not a fedpcr code" in P.describe_error(2)


def test_site_settings_read_only_their_keys_and_agree_with_the_coordinator() -> None:
    from common.models.config import preset
    from server.config import FederationConfig, config_json

    model = preset("small", width=4)
    run = {"seed": 3, "local-epochs": 2, "model-config": config_json(model), "train-config": json.dumps({"lr": 0.002}),
           "strategy": "fedprox", "num-server-rounds": 5, "a-server-only-typo": 1}
    site = P.SiteSettings.from_run_config(run)  # the coordinator's keys (and its typos) do not matter here
    assert (site.seed, site.local_epochs) == (3, 2)
    assert site.model().hash() == model.hash()
    assert site.train().seed == 3 and site.train().lr == 0.002
    fed = FederationConfig.from_run_config({k: v for k, v in run.items() if k != "a-server-only-typo"})
    assert fed.site() == site and fed.model().hash() == site.model().hash() and fed.train() == site.train()
    defaults = FederationConfig()
    assert (defaults.seed, defaults.local_epochs, defaults.model_preset) == (
        P.SiteSettings().seed, P.SiteSettings().local_epochs, P.SiteSettings().model_preset)
    with pytest.raises(ValueError, match="'seed'"):
        P.SiteSettings.from_run_config({"seed": "three"})
    with pytest.raises(ValueError, match="lr_schedule"):
        P.SiteSettings(train_config=json.dumps({"lr_schedule": "cosine"})).train()


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_package_boundaries_of_the_contract() -> None:
    """client/ never imports server/ (and back); the protocol module needs neither Flower nor torch."""
    for pkg, banned in (("client", "server"), ("server", "client")):
        bad = [p.name for p in (ROOT / pkg).glob("*.py") if banned in _imports(p)]
        assert not bad, f"{pkg}/ imports {banned}/: {bad}"
    assert _imports(ROOT / "common" / "protocol.py") <= {"__future__", "dataclasses", "json", "typing", "numpy",
                                                          "common"}


def test_run_config_key_constants_are_the_site_settings_keys() -> None:
    import dataclasses

    keys = {f.name.replace("_", "-") for f in dataclasses.fields(P.SiteSettings)}
    assert keys == {P.RUN_SEED, P.RUN_LOCAL_EPOCHS, P.RUN_MODEL_PRESET, P.RUN_MODEL_CONFIG, P.RUN_TRAIN_CONFIG}
