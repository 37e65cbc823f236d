"""The real ServerApp round loop, real ClientApp and real Flower strategies, in-process (tests/local_grid.py):
a poisoned site (NaN; 1e6 scale) is named and kept out, the final held-out AUROC stays within 0.02 of
the clean run; a site that never answers or vanishes does not stall the run; resume after a crash between
the metrics row and the checkpoint applies no round twice. Held-out = a fourth institution's cache that
never takes part in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context
from sklearn.metrics import roc_auc_score

from cache_factory import make_cache
from common.bundle import load_bundle
from common.config import TrainConfig
from common.train import predict
from client.task import load_site
from local_grid import LocalGrid, nan_arrays, scale_arrays
from server.app import run_federation
from server.checkpoint import load_checkpoint, read_metrics

MODEL_JSON = json.dumps({"width": 4, "image_features": 8, "clinical_hidden": 8, "fusion_hidden": 8,
                         "modality_dropout": 0.0})
TRAIN = TrainConfig(batch_size=8, lr=3e-3, augment=False, val_fraction=0.3, test_fraction=0.0, loss="bce")
TRAIN_JSON = json.dumps({"batch_size": 8, "lr": 3e-3, "augment": False, "val_fraction": 0.3, "test_fraction": 0.0,
                         "loss": "bce"})


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {f"S{i}": make_cache(root, f"S{i}", n=24, seed=20 + i, signal="both", strength=2.0) for i in range(5)}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("heldout"), "HELDOUT", n=100, seed=99, signal="both", strength=2.0)


def _run(sites: dict[str, Path], out: Path, strategy: str = "fedavg", rounds: int = 3, faults=None,
         state_root: Path | None = None, **extra) -> tuple[LocalGrid, list[dict]]:
    config = {"num-server-rounds": rounds, "strategy": strategy, "out-dir": str(out), "min-nodes": len(sites),
              "initial-eval": False, "model-config": MODEL_JSON, "train-config": TRAIN_JSON, "local-epochs": 1,
              "seed": 0, "node-wait": 0.0, "round-timeout": 30.0, **extra}
    grid = LocalGrid(sites, config, faults, state_root)
    run_federation(grid, Context(run_id=1, node_id=1, node_config={}, state=None, run_config=config))  # type: ignore[arg-type]
    return grid, read_metrics(out)


def _heldout_auroc(out: Path, heldout: Path) -> float:
    bundle = load_bundle(out / "bundle")
    site = load_site(str(heldout), TRAIN.seed, TRAIN.val_fraction, TRAIN.test_fraction)
    ids = [i for split in site.splits.values() for i in split]
    from common.data import PCRDataset

    y, s = predict(bundle.model, PCRDataset(site.cache, ids), TRAIN)
    return float(roc_auc_score(y, s))


@pytest.mark.parametrize("n_sites,poison,robust_from", [
    (3, "nan", 3), (3, "scale", 0),  # the robust default (trimmed mean from 3 sites) and plain FedAvg
    pytest.param(3, "scale", 3, marks=pytest.mark.slow), pytest.param(3, "nan", 0, marks=pytest.mark.slow),
    pytest.param(5, "nan", 3, marks=pytest.mark.slow), pytest.param(5, "scale", 3, marks=pytest.mark.slow),
    pytest.param(5, "nan", 0, marks=pytest.mark.slow), pytest.param(5, "scale", 0, marks=pytest.mark.slow),
])
def test_poisoned_site_named_and_excluded(sites: dict[str, Path], heldout: Path, tmp_path: Path, n_sites: int,
                                          poison: str, robust_from: int) -> None:
    chosen = dict(list(sites.items())[:n_sites])
    fault = nan_arrays() if poison == "nan" else scale_arrays(1e6)
    _, clean = _run(chosen, tmp_path / "clean", **{"robust-from": robust_from})
    _, rows = _run(chosen, tmp_path / "poisoned", faults={"S0": fault}, **{"robust-from": robust_from})
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert [b["site"] for b in r["invalid"]] == ["S0"] and r["failed_sites"] == ["S0"]
        assert "S0" not in r["train_sites"] and "S0" in r["per_site"]  # still evaluates; never averaged in
    ck = load_checkpoint(tmp_path / "poisoned")
    assert all(np.isfinite(v).all() for v in ck.arrays.values())
    clean_auc, poisoned_auc = _heldout_auroc(tmp_path / "clean", heldout), _heldout_auroc(tmp_path / "poisoned", heldout)
    assert abs(clean_auc - poisoned_auc) <= 0.02 or poisoned_auc >= clean_auc, (clean_auc, poisoned_auc)


def test_silent_and_vanishing_sites_do_not_stall(sites: dict[str, Path], tmp_path: Path) -> None:
    chosen = dict(list(sites.items())[:3])
    calls = {"n": 0}

    def vanish_after_round_1(reply, msg):  # S2 answers round 1, then never again (its SuperNode died)
        return reply if int(msg.content["config"]["server-round"]) <= 1 else None

    grid, rows = _run(chosen, tmp_path / "run", faults={"S2": vanish_after_round_1}, **{"min-replies": 2})
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert rows[0]["missing"] == [] and rows[0]["train_sites"] == ["S0", "S1", "S2"]
    for r in rows[1:]:
        assert {m["site"] for m in r["missing"]} == {"S2"} and r["train_sites"] == ["S0", "S1"]
    # with min-replies 3 the same fault makes rounds 2-3 fail (model unchanged) instead of silently proceeding
    _, rows3 = _run(chosen, tmp_path / "strict", faults={"S2": vanish_after_round_1}, **{"min-replies": 3})
    assert [r["status"] for r in rows3] == ["ok", "failed", "failed"] and "min-replies" in rows3[1]["reason"]
    del calls


def test_resume_after_crash_between_metrics_and_checkpoint(sites: dict[str, Path], tmp_path: Path) -> None:
    chosen = dict(list(sites.items())[:3])
    out = tmp_path / "run"
    _, full = _run(chosen, tmp_path / "reference", rounds=3)
    _run(chosen, out, rounds=2)
    # simulate SIGKILL after round 3's metrics row was appended but before its checkpoint was committed
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"round": 3, "status": "ok"}) + "\n" + '{"round": 4, "sta')
    grid, rows = _run(chosen, out, rounds=3, resume=True)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert sorted({rnd for _, kind, rnd in grid.sent if kind == "train"}) == [3]  # only round 3 trained again
    ref, got = load_checkpoint(tmp_path / "reference"), load_checkpoint(out)
    for k, v in ref.arrays.items():  # same seeds, site-sorted aggregation: the same model as without the crash
        np.testing.assert_allclose(got.arrays[k], v, rtol=0, atol=1e-6)


def test_site_refuses_nan_model_and_fedbn_norms_survive_restart(sites: dict[str, Path], tmp_path: Path) -> None:
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    from common.protocol import BAD_MODEL

    chosen = dict(list(sites.items())[:2])
    grid, rows = _run(chosen, tmp_path / "run", strategy="fedbn", rounds=1, state_root=tmp_path / "state")
    node = grid.node_of("S0")
    saved = sorted((tmp_path / "state" / "S0").glob("local-norm-*.npz"))
    assert len(saved) == 1
    ctx = grid.nodes[node][1]
    with np.load(saved[0]) as data:
        assert sorted(data.files) == sorted(ctx.state["fedpcr-local-norm"].keys())
    # the same evaluate message to the running site and to the site after a restart (empty context.state)
    from server.app import _record, round_config
    from server.checkpoint import load_checkpoint as _load
    from server.config import FederationConfig

    cfg = FederationConfig.from_run_config(grid.run_config)
    arrays = _record(_load(tmp_path / "run").arrays)
    rc = round_config(cfg)
    rc["server-round"] = 2
    msg = Message(content=RecordDict({"arrays": arrays, "config": rc}), dst_node_id=node, message_type="evaluate")
    before = grid.app(msg, ctx).content["metrics"]
    restarted = Context(run_id=1, node_id=node, node_config=ctx.node_config, state=RecordDict(),
                        run_config=grid.run_config)
    after = grid.app(msg, restarted).content["metrics"]
    assert list(after["tp"]) == list(before["tp"]) and after["loss"] == pytest.approx(before["loss"], abs=1e-6)
    no_state = Context(run_id=1, node_id=node, node_config={k: v for k, v in ctx.node_config.items() if k != "state-dir"},
                       state=RecordDict(), run_config=grid.run_config)
    assert grid.app(msg, no_state).content["metrics"]["loss"] != pytest.approx(before["loss"], abs=1e-6)
    # a NaN global model is refused with its own code, naming the array
    bad = ArrayRecord({k: Array(np.full_like(v, np.nan)) for k, v in _load(tmp_path / "run").arrays.items()})
    msg = Message(content=RecordDict({"arrays": bad, "config": rc}), dst_node_id=node, message_type="train")
    reply = grid.app(msg, ctx)
    assert reply.has_error() and reply.error.code == BAD_MODEL and "non-finite" in reply.error.reason
