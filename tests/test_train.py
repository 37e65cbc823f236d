"""Data loading, splits, losses, FedProx, determinism, learning the planted signal, baselines."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from common.baselines import KINETIC_FEATURES, make_baseline
from common.config import PrepConfig, TrainConfig
from common.data import PCRDataset, dataset_ids, load_cache, pool_datasets, split_patients
from common.losses import focal_loss, masked_bce, weighted_bce
from common.models import build_model, preset
from common.train import fit, make_optimizer, make_scheduler, predict, proximal_term, seed_everything, train_epochs
from common.weights import get_weights, set_weights
from tests.cache_factory import make_cache

FAST = TrainConfig(epochs=1, batch_size=8, augment=True, patience=3)


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return load_cache(make_cache(tmp_path_factory.mktemp("img"), "IMG", n=120, seed=1, signal="image",
                                 strength=0.8))


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return load_cache(make_cache(tmp_path_factory.mktemp("small"), "SMALL", n=24, seed=2, unlabelled=3))


# ---------------------------------------------------------------- cache and splits
def test_load_cache_reads_contract(small_cache):
    c = small_cache
    assert c.channels == ("pre", "post1", "sub1") and c.site == "SMALL"
    assert c.prep_hash == PrepConfig(shape=(32, 32, 32)).hash()
    assert len(c.ids) == 24 and len(c.labelled_ids()) == 21
    ds = PCRDataset(c, c.labelled_ids()[:3])
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32, 32)
    raw = np.load(c.path / "volumes" / f"{ds.ids[1]}.npy")
    assert raw.dtype == np.float16 and np.array_equal(item["image"].numpy(), raw.astype(np.float32))
    assert item["clinical"].shape == item["clinical_present"].shape == (14,)
    assert item["receptors"].shape == (3,) and item["index"] == 1
    sub = PCRDataset(c, ds.ids, channels=("sub1",))
    assert np.array_equal(sub[0]["image"].numpy()[0], raw_of(c, ds.ids[0])[2])
    with pytest.raises(ValueError, match="t2"):
        PCRDataset(c, ds.ids, channels=("t2",))
    with pytest.raises(KeyError, match="nobody"):
        PCRDataset(c, ["nobody"])


def raw_of(cache, pid):
    return np.load(cache.path / "volumes" / f"{pid}.npy").astype(np.float32)


def test_load_cache_errors_name_the_file(tmp_path):
    path = make_cache(tmp_path, "BAD", n=6)
    (path / "volumes" / "BAD_003.npy").unlink()
    cache = load_cache(path)
    assert "BAD_003" not in cache.ids and any(i["patient"] == "BAD_003" for i in cache.issues)
    man = pd.read_csv(path / "manifest.csv")
    man.loc[0, "label"] = 7
    man.to_csv(path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=r"manifest.csv.*BAD_000.*label"):
        load_cache(path)
    man.loc[0, "label"] = 1
    man.loc[1, "prep_hash"] = "deadbeef"
    man.to_csv(path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="deadbeef|BAD_001"):
        load_cache(path)
    (path / "prep_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="prep_config.json"):
        load_cache(path)


def test_split_stratified_deterministic_disjoint():
    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(200)]
    labels = (rng.random(200) < 0.3).astype(float)
    labels[:5] = np.nan
    sp = split_patients(ids, labels, seed=3, val_fraction=0.2, test_fraction=0.25)
    perm = rng.permutation(200)
    again = split_patients([ids[i] for i in perm], labels[perm], seed=3, val_fraction=0.2, test_fraction=0.25)
    assert sp == again  # independent of input order
    assert sp != split_patients(ids, labels, seed=4, val_fraction=0.2, test_fraction=0.25)
    sets = [set(sp[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == {i for i, y in zip(ids, labels) if not np.isnan(y)}
    lab = dict(zip(ids, labels))
    rate = np.nanmean(labels)
    for k, frac in (("test", 0.25), ("val", 0.2)):
        y = np.array([lab[i] for i in sp[k]])
        assert abs(y.mean() - rate) < 0.03 and abs(len(y) - frac * 195) <= 2


def test_pooling_refuses_other_prep_hash(tmp_path, small_cache):
    other = load_cache(make_cache(tmp_path, "OTHER", n=6, prep=PrepConfig(shape=(32, 32, 32), n4=True)))
    with pytest.raises(ValueError) as err:
        pool_datasets([PCRDataset(small_cache, small_cache.labelled_ids()), PCRDataset(other, other.labelled_ids())])
    assert small_cache.prep_hash in str(err.value) and other.prep_hash in str(err.value)
    assert "OTHER" in str(err.value)


# ---------------------------------------------------------------- losses and FedProx
def test_focal_loss_matches_hand_computation():
    z = [2.0, -1.0, 0.5, -3.0]
    y = [1.0, 0.0, 0.0, 1.0]
    gamma, alpha = 2.0, 0.25
    expected = []
    for zi, yi in zip(z, y):
        p = 1 / (1 + math.exp(-zi))
        pt = p if yi == 1 else 1 - p
        at = alpha if yi == 1 else 1 - alpha
        expected.append(-at * (1 - pt) ** gamma * math.log(pt))
    got = focal_loss(torch.tensor(z), torch.tensor(y), gamma=gamma, alpha=alpha)
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-5)
    # gamma 0 and no alpha = plain BCE = sklearn's log loss
    probs = 1 / (1 + np.exp(-np.array(z)))
    assert focal_loss(torch.tensor(z), torch.tensor(y), gamma=0, alpha=None).item() == pytest.approx(
        log_loss(y, probs), rel=1e-5)
    assert weighted_bce(torch.tensor(z), torch.tensor(y)).item() == pytest.approx(log_loss(y, probs), rel=1e-5)
    w = np.where(np.array(y) == 1, 3.0, 1.0)
    assert weighted_bce(torch.tensor(z), torch.tensor(y), pos_weight=3.0).item() == pytest.approx(
        log_loss(y, probs, sample_weight=w) * w.sum() / len(w), rel=1e-5)
    # masked receptor loss averages over present entries only
    present = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert masked_bce(torch.tensor(z), torch.tensor(y), present).item() == pytest.approx(
        log_loss([y[0], y[2]], probs[[0, 2]]), rel=1e-5)


def test_cosine_schedule_follows_closed_form_and_constant_is_none():
    model = build_model(preset("small", width=4))
    cfg = TrainConfig(lr=1e-3, epochs=8, lr_schedule="cosine")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    for epoch in range(1, cfg.epochs + 1):
        optimizer.step()
        scheduler.step()
        expected = 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert make_scheduler(optimizer, TrainConfig(lr_schedule="constant")) is None


def test_fedprox_term_zero_at_reference_and_gradient_points_back():
    model = build_model(preset("small", width=4))
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert proximal_term(model, ref, mu=0.5).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    term = proximal_term(model, ref, mu=0.5)
    term.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 0.5 * (p.detach() - ref[name]), atol=1e-7)
    manual = 0.25 * sum(((p.detach() - ref[n]) ** 2).sum() for n, p in model.named_parameters())
    assert term.item() == pytest.approx(manual.item(), rel=1e-5)


def test_fedprox_in_training_pulls_towards_reference(small_cache):
    ids = small_cache.labelled_ids()
    ds = PCRDataset(small_cache, ids, augment=False)
    dists = {}
    for mu in (0.0, 10.0):
        seed_everything(0)
        model = build_model(preset("small", width=4))
        ref = get_weights(model)
        train_epochs(model, ds, dataclasses.replace(FAST, prox_mu=mu, lr=1e-2), 2, prox_ref=ref)
        dists[mu] = sum(float(((a - b) ** 2).sum()) for a, b in zip(get_weights(model), ref))
    assert dists[10.0] < dists[0.0]


# ---------------------------------------------------------------- determinism and weights
def test_same_seed_same_weights(small_cache):
    ds = PCRDataset(small_cache, small_cache.labelled_ids(), augment=True)
    results = []
    for _ in range(2):
        seed_everything(7)
        model = build_model(preset("small", width=4))
        out = train_epochs(model, ds, FAST, 1)
        results.append((out, get_weights(model)))
    assert results[0][0] == results[1][0] and results[0][0]["n"] == 21
    assert all(np.array_equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_get_set_weights_roundtrip(small_cache):
    a, b = build_model(preset("small", width=4, norm="batch")), build_model(preset("small", width=4, norm="batch"))
    set_weights(b, get_weights(a))
    ds = PCRDataset(small_cache, small_cache.labelled_ids())
    assert np.array_equal(predict(a, ds, FAST)[1], predict(b, ds, FAST)[1])
    with pytest.raises(ValueError, match="shape"):
        set_weights(b, [w[..., :1] if w.ndim else w for w in get_weights(a)])
    with pytest.raises(ValueError, match=r"model has \d+ state entries, got \d+ arrays"):
        set_weights(b, get_weights(a)[1:])


def test_predict_never_augments(small_cache):
    ds = PCRDataset(small_cache, small_cache.labelled_ids(), augment=True)
    model = build_model(preset("small", width=4))
    s1, s2 = predict(model, ds, FAST)[1], predict(model, ds, FAST)[1]
    assert np.array_equal(s1, s2) and ds.augment


# ---------------------------------------------------------------- learning and baselines
def test_small_model_learns_planted_image_signal(image_cache):
    c = image_cache
    sp = split_patients(c.labelled_ids(), c.labels(c.labelled_ids()), 0, 0.2, 0.25)
    cfg = TrainConfig(epochs=12, patience=6, seed=0, loss="weighted_bce")  # focal alpha=0.25 down-weights the minority pCR class; see report
    mk = lambda part, aug: PCRDataset(c, sp[part], augment=aug)  # noqa: E731
    model = build_model(preset("small"))
    res = fit(model, mk("train", True), mk("val", False), cfg, log=None)
    y, s = predict(model, mk("test", False), cfg)
    auc = roc_auc_score(y, s)
    base = make_baseline("clinical_logistic").fit([(c, sp["train"])])
    base_auc = roc_auc_score(c.labels(sp["test"]), base.predict(c, sp["test"]))
    assert auc > 0.8 and auc > base_auc + 0.15, (auc, base_auc, res.history)
    assert 0 < res.threshold < 1 and res.best_epoch >= 1
    assert [h["epoch"] for h in res.history] == list(range(1, len(res.history) + 1))


def test_clinical_baseline_learns_clinical_signal(tmp_path):
    c = load_cache(make_cache(tmp_path, "CLIN", n=100, seed=3, signal="clinical"))
    sp = split_patients(c.labelled_ids(), c.labels(c.labelled_ids()), 0, 0.0, 0.3)
    base = make_baseline("clinical_logistic").fit([(c, sp["train"])])
    assert roc_auc_score(c.labels(sp["test"]), base.predict(c, sp["test"])) > 0.8


def test_kinetic_baseline_uses_training_statistics_only(image_cache):
    c = image_cache
    sp = split_patients(c.labelled_ids(), c.labels(c.labelled_ids()), 0, 0.0, 0.3)
    base = make_baseline("kinetic_logistic").fit([(c, sp["train"])])
    table = pd.read_csv(c.path / "kinetics.csv", dtype={"patient_id": str}).set_index("patient_id")
    train_means = table.loc[sp["train"], list(KINETIC_FEATURES)].mean().to_numpy()
    scaler = base.pipeline.named_steps["standardscaler"]
    assert np.allclose(scaler.mean_, train_means)
    assert roc_auc_score(c.labels(sp["test"]), base.predict(c, sp["test"])) > 0.7  # max_pe carries the signal


def test_pooled_dataset_ids_in_order(small_cache, tmp_path):
    other = load_cache(make_cache(tmp_path, "SECOND", n=6))
    pooled = pool_datasets([PCRDataset(small_cache, small_cache.labelled_ids()[:4]),
                            PCRDataset(other, other.labelled_ids())])
    assert len(pooled) == 10
    assert dataset_ids(pooled)[:4] == [("SMALL", i) for i in small_cache.labelled_ids()[:4]]
    assert dataset_ids(pooled)[4][0] == "SECOND"
    assert json.loads((other.path / "prep_config.json").read_text())["hash"] == other.prep_hash
