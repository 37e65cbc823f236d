"""Model bundle round trip; ``fedpcr train`` -> ``fedpcr evaluate`` end to end on factory caches."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from common.bundle import load_bundle, save_bundle
from common.config import PrepConfig, TrainConfig
from common.data import PCRDataset, load_cache, split_patients
from common.evaluate_cli import main as evaluate_main
from common.models import build_model, preset
from common.train import predict
from common.train_cli import main as train_main
from tests.cache_factory import make_cache


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    a = make_cache(root, "SITEA", n=40, seed=11, signal="both")
    b = make_cache(root, "SITEB", n=30, seed=12, signal="both")
    other = make_cache(root, "SITEC", n=12, seed=13, prep=PrepConfig(shape=(32, 32, 32), spacing_mm=1.5))
    return a, b, other


def test_bundle_roundtrip(tmp_path, caches):
    cache = load_cache(caches[0])
    mc = preset("small", width=4, norm="batch")
    tc = TrainConfig(threshold_rule="weighted_youden", youden_weight=0.8)
    model = build_model(mc)
    with torch.no_grad():  # move BN running stats off their defaults so buffers are checked too
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    save_bundle(tmp_path / "b", model, mc, {"config": cache.prep_config, "hash": cache.prep_hash}, tc, ["SITEA"],
                {"auroc": 0.7, "nan": float("nan")}, 0.42, extra={"note": "x"})
    b = load_bundle(tmp_path / "b")
    assert b.model_config == mc and b.train_config == tc and b.prep_hash == cache.prep_hash
    assert b.threshold == 0.42 and b.threshold_rule == "weighted_youden" and b.train_sites == ["SITEA"]
    assert b.meta["model_hash"] == mc.hash() and b.meta["note"] == "x" and b.val_metrics["nan"] is None
    for (k, v), (k2, v2) in zip(model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    ds = PCRDataset(cache, cache.labelled_ids()[:6])
    assert np.array_equal(predict(model, ds, tc)[1], predict(b.model, ds, tc)[1])
    weights = tmp_path / "b" / "model.pt"
    state = torch.load(weights, weights_only=True)
    state[next(iter(state))] += 1
    torch.save(state, weights)
    with pytest.raises(ValueError, match="sha256"):
        load_bundle(tmp_path / "b")


def test_train_then_evaluate_end_to_end(tmp_path, caches, capsys):
    a, b, _ = caches
    cfg = tmp_path / "train.yaml"
    cfg.write_text("train:\n  epochs: 2\n  batch_size: 8\n  val_fraction: 0.25\n  test_fraction: 0.25\n"
                   "model:\n  width: 4\n")
    run = tmp_path / "run"
    assert train_main(["--cache", str(a), str(b), "--out", str(run), "--config", str(cfg), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "epoch   2/2" in out
    meta = json.loads((run / "bundle.json").read_text())
    assert meta["train_sites"] == ["SITEA", "SITEB"] and meta["train_config"]["seed"] == 3
    assert meta["model_config"]["width"] == 4 and meta["prep_hash"] == load_cache(a).prep_hash
    assert 0 <= meta["threshold"] <= 1 and "auroc" in meta["val_metrics"]
    text = (run / "bundle.json").read_text()
    assert not any(pid in text for pid in load_cache(a).ids + load_cache(b).ids)  # ids stay in split.json
    split = json.loads((run / "split.json").read_text())
    for site, path in (("SITEA", a), ("SITEB", b)):
        c = load_cache(path)
        ids = c.labelled_ids()
        assert {k: split["sites"][site][k] for k in ("train", "val", "test")} == split_patients(
            ids, c.labels(ids), 3, 0.25, 0.25)
    report = tmp_path / "report"
    assert evaluate_main(["--model", str(run), "--cache", str(a), "--out", str(report), "--n-boot", "50",
                          "--reference", "clinical_logistic"]) == 0
    for name in ("metrics.json", "predictions.csv", "report.md"):
        assert (report / name).is_file(), name
    if importlib.util.find_spec("common.evaluation") is not None:
        assert list(report.glob("*.png"))  # ROC / PR / calibration / decision-curve figures
    pred = pd.read_csv(report / "predictions.csv", dtype={"patient_id": str})
    if "score_clinical_logistic" in pred.columns:  # baseline refitted on training patients, same test patients
        assert pred["score_clinical_logistic"].between(0, 1).all()
    assert sorted(pred["patient_id"]) == split["sites"]["SITEA"]["test"]  # only held-back patients
    assert set(pred["patient_id"]).isdisjoint(split["sites"]["SITEA"]["train"])
    everything = tmp_path / "all"
    assert evaluate_main(["--model", str(run), "--cache", str(b), "--out", str(everything), "--split", "all",
                          "--n-boot", "50"]) == 0
    assert len(pd.read_csv(everything / "predictions.csv")) == len(load_cache(b).labelled_ids())
    assert "WARNING" in capsys.readouterr().out + (everything / "report.md").read_text() + (
        everything / "metrics.json").read_text()


def test_evaluate_refuses_other_prep_hash(tmp_path, caches, capsys):
    a, _, other = caches
    run = tmp_path / "run"
    assert train_main(["--cache", str(a), "--out", str(run), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert evaluate_main(["--model", str(run), "--cache", str(other), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert load_cache(a).prep_hash in err and load_cache(other).prep_hash in err and "refus" in err
    assert not (tmp_path / "rep").exists()


def test_train_refuses_mixed_prep_and_bad_config(tmp_path, caches, capsys):
    a, _, other = caches
    assert train_main(["--cache", str(a), str(other), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert load_cache(a).prep_hash in err and load_cache(other).prep_hash in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert train_main(["--cache", str(a), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "epochz" in capsys.readouterr().err
    assert train_main(["--cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere" in capsys.readouterr().err
