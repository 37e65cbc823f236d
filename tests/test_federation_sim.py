"""Federated training in Flower's Ray simulation: the real ServerApp + ClientApp on three planted-signal
site caches. Checks learning, the pooled AUROC from summed counts against scikit-learn on the pooled
predictions, resume without repeated rounds, strategy variants and hash refusal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cache_factory import make_cache
from common.bundle import load_bundle
from common.config import PrepConfig, TrainConfig
from common.metrics_counts import THRESHOLD_GRID, threshold_counts
from common.models.config import preset
from common.train import predict
from client.task import load_site
from server.checkpoint import load_checkpoint, read_metrics
from simulation.federated import run_federated

SITES = ("ALPHA", "BRAVO", "CHARLIE")
MODEL = preset("small", width=4, image_features=8, clinical_hidden=8, fusion_hidden=8, modality_dropout=0.0)
TRAIN = TrainConfig(batch_size=8, lr=3e-3, augment=False, val_fraction=0.3, test_fraction=0.2, loss="bce")


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {s: make_cache(root, s, n=40, seed=10 + i, signal="both", strength=2.0) for i, s in enumerate(SITES)}


def _audit_rows(audit: Path) -> list[dict]:
    from common.audit_chain import read_entries

    return read_entries(audit, "reply")


def test_fedavg_learns_and_pooled_auroc_matches_sklearn(caches: dict[str, Path], tmp_path: Path) -> None:
    res = run_federated(caches, tmp_path / "run", strategy="fedavg", num_rounds=4, model_cfg=MODEL,
                        train_cfg=TRAIN, local_epochs=2, seed=0)
    rounds = [r["round"] for r in res.history]
    assert rounds == [0, 1, 2, 3, 4]
    auc = [r["pooled_val_auroc"] for r in res.history]
    assert auc[-1] > auc[0] + 0.05, auc
    assert all(set(r["per_site"]) == set(SITES) for r in res.history)
    n_val = sum(len(load_site(str(p), TRAIN.seed, TRAIN.val_fraction, TRAIN.test_fraction).splits["val"])
                for p in caches.values())
    assert all(r["val_n"] == n_val for r in res.history)

    bundle = load_bundle(res.bundle_dir)
    meta = json.loads((res.bundle_dir / "bundle.json").read_text())
    assert sorted(bundle.train_sites) == sorted(SITES)
    best = max(res.history[1:], key=lambda r: r["pooled_val_auroc"])
    assert meta["best_round"] == best["round"]
    # Independent reference: the bundle's model predicts every site's validation patients locally; the
    # pooled scikit-learn AUROC must equal the federated AUROC computed from summed threshold counts.
    ys, ss = [], []
    for name, path in caches.items():
        site = load_site(str(path), TRAIN.seed, TRAIN.val_fraction, TRAIN.test_fraction)
        y, s = predict(bundle.model, site.dataset("val", MODEL), TRAIN)
        ys.append(y)
        ss.append(s)
        assert best["per_site"][name]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=2e-3)
    pooled = roc_auc_score(np.concatenate(ys), np.concatenate(ss))
    assert best["pooled_val_auroc"] == pytest.approx(pooled, abs=2e-3)
    assert bundle.val_metrics["auroc"] == pytest.approx(pooled, abs=2e-3)
    assert 0.0 < bundle.threshold < 1.0


def test_resume_continues_without_repeating_rounds(caches: dict[str, Path], tmp_path: Path) -> None:
    out, audit = tmp_path / "run", tmp_path / "audit"
    kw = dict(strategy="fedadam", model_cfg=MODEL, train_cfg=TRAIN, local_epochs=1, seed=1,
              extra_config={"resume": True, "server-lr": 0.01})
    run_federated(caches, out, num_rounds=2, audit_dir=audit, **kw)
    first = read_metrics(out)
    ck = load_checkpoint(out)
    assert ck is not None and ck.round == 2 and {"m_t", "v_t"} <= set(ck.strategy_state)
    trained_before = [r for r in _audit_rows(audit) if r["message_type"] == "train"]
    assert sorted({r["server_round"] for r in trained_before}) == [1, 2]

    res = run_federated(caches, out, num_rounds=3, audit_dir=audit, **kw)  # the "restart"
    rows = _audit_rows(audit)
    trained = [r for r in rows if r["message_type"] == "train"]
    # every round trained exactly once per site: the restart trained round 3 only
    assert Counter(r["server_round"] for r in trained) == {1: len(SITES), 2: len(SITES), 3: len(SITES)}
    assert [r["round"] for r in res.history] == [0, 1, 2, 3]
    assert res.history[:3] == first  # finished rounds are not redone or rewritten
    assert load_checkpoint(out).round == 3


@pytest.mark.parametrize("strategy", ["fedprox", "fedbn"])
def test_strategies_run(caches: dict[str, Path], tmp_path: Path, strategy: str) -> None:
    res = run_federated(caches, tmp_path / strategy, strategy=strategy, num_rounds=1, model_cfg=MODEL,
                        train_cfg=TRAIN, local_epochs=1, seed=0, audit_dir=tmp_path / "audit")
    assert [r["round"] for r in res.history] == [0, 1]
    assert np.isfinite(res.history[1]["pooled_val_auroc"])
    assert (res.bundle_dir / "model.pt").exists()
    # The round chosen and its threshold belong to the model the bundle deploys (FedBN: averaged norm layers,
    # not each site's local ones): the bundle's own threshold counts on every site's validation patients equal,
    # count for count, the summed counts the server selected the round and the threshold on.
    # Counts are taken on the round's evaluation grid (common/score_grid.py), the threshold maps back to scores.
    from common.metrics_counts import youden_from_counts
    from common.score_grid import from_grid, to_grid

    bundle = load_bundle(res.bundle_dir)
    meta = load_checkpoint(tmp_path / strategy).meta
    grid = tuple(meta.get("best_grid") or (0.0, 1.0))
    assert grid != (0.0, 1.0)  # round 1 is evaluated on the grid placed from round 0's pooled counts
    preds = [predict(bundle.model, load_site(str(p), TRAIN.seed, TRAIN.val_fraction, TRAIN.test_fraction
                                             ).dataset("val", MODEL), TRAIN) for p in caches.values()]
    mine = sum(np.asarray(threshold_counts(y, to_grid(s, *grid), THRESHOLD_GRID)) for y, s in preds)
    assert np.array_equal(mine, np.asarray(meta["best_counts"]))
    assert bundle.threshold == pytest.approx(from_grid(youden_from_counts(mine, w=TRAIN.threshold_weight()), *grid))


def test_site_with_other_preprocessing_is_refused(caches: dict[str, Path], tmp_path: Path) -> None:
    other = make_cache(tmp_path, "DELTA", n=20, seed=5, prep=PrepConfig(spacing_mm=1.5))
    sites = {**caches, "DELTA": other}
    res = run_federated(sites, tmp_path / "run", strategy="fedavg", num_rounds=1, model_cfg=MODEL,
                        train_cfg=TRAIN, local_epochs=1, seed=0,
                        extra_config={"prep-config": json.dumps({"spacing_mm": 2.0})})
    refused = res.history[1]["refused"]
    assert {r["phase"] for r in refused} == {"train", "evaluate"}
    reason = refused[0]["reason"]
    assert PrepConfig().hash() in reason and PrepConfig(spacing_mm=1.5).hash() in reason and "DELTA" in reason
    assert sorted(load_bundle(res.bundle_dir).train_sites) == sorted(SITES)
