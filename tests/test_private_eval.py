"""The attack on evaluation replies (issue 12): a coordinator crafts a model whose score is a monotone function
of one clinical variable (age) and asks a tiny site (5 patients, 3 pCR) to evaluate it, many times.

Through the real ClientApp evaluate path (Flower Message objects, in process):
- the OLD reply (exact counts on the 2,641-threshold grid) gives every patient's age, tagged with the label;
- the DEFAULT reply sends no counts for this site (fewer than 5 patients per class), round after round;
- a site that lowers its minimum still sends only coarse-binned, noised counts: nothing finer than one score
  bin (1/score_bins), and asking again for the same weights returns the same noisy reply (no averaging).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from client.app import make_client_app
from client.policy import EvaluationPolicy, SitePolicy
from client.private_eval import counts_from_histogram, discrete_laplace, protect, score_histogram
from common.metrics_counts import THRESHOLD_GRID, threshold_counts
from common.models import build_model
from common.protocol import METRICS, RoundConfig, SiteSettings
from common.site_cache import read_prep_hash
from tests.cache_factory import make_cache

AGE = "age"
OVERRIDES = {"model-config": json.dumps({"use_image": False}),
             "train-config": json.dumps({"val_fraction": 0.99, "test_fraction": 0.0})}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 5-patient site with 3 positives (all in the evaluated split) and its true (age input, label) pairs."""
    from client.task import load_site

    root = tmp_path_factory.mktemp("tiny")
    for seed in range(200):
        path = make_cache(root / f"s{seed}", site="TINY", n=5, seed=seed, pos_rate=0.6)
        site = load_site(str(path), 0, 0.99, 0.0)
        ages = _ages(site, site.splits["val"])
        if len(site.splits["val"]) == 5 and sum(site.cache.labels(site.splits["val"])) == 3 and \
                np.isfinite(ages).all() and len(set(np.round(ages, 2))) == 5:
            labels = np.asarray(site.cache.labels(site.splits["val"]), dtype=int)
            return {"path": path, "ages": ages, "labels": labels}
    raise AssertionError("no seed gave a 5-patient site with 3 positives")


def _ages(site, ids) -> np.ndarray:
    cfg = SiteSettings.from_run_config({}, OVERRIDES).model()
    ds = site.dataset("val", cfg)
    k = list(cfg.clinical_features).index(AGE)
    return np.array([float(ds[i]["clinical"][k]) if float(ds[i]["clinical_present"][k]) else np.nan
                     for i in range(len(ds))])


def crafted_model(slope: float, offset: float) -> torch.nn.Module:
    """Coordinator-chosen weights: score = sigmoid(slope * (g(age) - offset)), g monotone (ELU chain)."""
    cfg = SiteSettings.from_run_config({}, OVERRIDES).model()
    model = build_model(cfg)
    k = list(cfg.clinical_features).index(AGE)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        enc = model.clinical_encoder
        enc.var_weight[k, 0, 0] = 1.0  # emb[k, 0] = elu(age)
        enc.mlp[0].weight[0, k * 8] = 1.0
        enc.mlp[3].weight[0, 0] = 1.0
        model.head[0].weight[0, 0], model.head[0].bias[0] = 1.0, 10.0  # keep ReLU in its linear part
        model.head[3].weight[0, 0], model.head[3].bias[0] = slope, -slope * (10.0 + offset)
    return model


def score_of_age(model: torch.nn.Module, ages: np.ndarray) -> np.ndarray:
    """What the coordinator computes offline: its own model's score for a given age input."""
    cfg = model.cfg
    n, f = len(ages), len(cfg.clinical_features)
    clinical = torch.zeros(n, f)
    clinical[:, list(cfg.clinical_features).index(AGE)] = torch.as_tensor(ages, dtype=torch.float32)
    present = torch.zeros(n, f)
    present[:, list(cfg.clinical_features).index(AGE)] = 1.0
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model({"clinical": clinical, "clinical_present": present})["logit"]).numpy()


def evaluate(tiny: dict, model: torch.nn.Module, policy: SitePolicy, state: Path) -> dict:
    """One evaluate message through the real ClientApp; returns the reply's metrics."""
    settings = SiteSettings.from_run_config({}, OVERRIDES)
    rc = RoundConfig(server_round=1, prep_hash=read_prep_hash(tiny["path"]), model_hash=settings.model().hash())
    ctx = Context(run_id=1, node_id=7, node_config={"data-path": str(tiny["path"]), "site-name": "TINY",
                                                      "state-dir": str(state)},
                  state=RecordDict(), run_config={})
    md = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=7, reply_to_message_id="", group_id="",
                  created_at=time.time(), ttl=3600.0, message_type="evaluate")
    msg = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                      "config": ConfigRecord(rc.to_dict())}), metadata=md)
    # The site approved this model architecture (its hash); the coordinator still chooses the WEIGHTS it sends.
    policy = replace(policy, code=replace(policy.code, model_hashes=(settings.model().hash(),)))
    reply = make_client_app(OVERRIDES, policy=policy)(msg, ctx)
    assert not reply.has_error(), reply.error.reason
    return dict(reply.content[METRICS])


def recover_scores(metrics: dict) -> dict[int, np.ndarray]:
    """The coordinator's reading of one reply: per label, the grid thresholds where the count steps down
    (each step = one patient whose score lies in [that threshold, the next one))."""
    out = {}
    for label, key in ((1, "tp"), (0, "fp")):
        c = np.asarray(metrics[key])
        drops = np.flatnonzero(np.diff(c) < 0)
        out[label] = np.repeat(THRESHOLD_GRID[drops], -np.diff(c)[drops])
    return out


def invert(model: torch.nn.Module, scores: np.ndarray) -> np.ndarray:
    grid = np.linspace(-4, 4, 8001)
    s = score_of_age(model, grid)
    return np.array([grid[np.searchsorted(s, x)] for x in scores])  # first age whose score reaches x


def test_old_exact_reply_reveals_every_patients_age_and_label(tiny: dict, tmp_path: Path) -> None:
    model = crafted_model(slope=3.0, offset=0.0)
    exact = SitePolicy(evaluation=EvaluationPolicy(min_patients_per_class=0, exact_counts=True))
    rec = recover_scores(evaluate(tiny, model, exact, tmp_path))
    for label in (0, 1):
        truth = np.sort(tiny["ages"][tiny["labels"] == label])
        np.testing.assert_allclose(np.sort(invert(model, rec[label])), truth, atol=0.01)  # one grid step


def test_default_reply_sends_nothing_for_a_tiny_site(tiny: dict, tmp_path: Path) -> None:
    for r in range(6):  # many crafted models, many rounds
        m = evaluate(tiny, crafted_model(3.0 + r, offset=0.3 * r - 1), SitePolicy(), tmp_path)
        assert m["withheld"] == 1 and m["num-examples"] == 0 and m["n-pos"] == 0 and m["n-neg"] == 0
        assert not any(m["tp"]) and not any(m["fp"]) and not any(m["tn"]) and not any(m["fn"])


def test_lowered_minimum_still_reveals_at_most_the_score_bin(tiny: dict, tmp_path: Path) -> None:
    bins = 20
    site = SitePolicy(evaluation=EvaluationPolicy(min_patients_per_class=1, score_bins=bins, eval_epsilon=1.0))
    no_noise = SitePolicy(evaluation=replace(site.evaluation, eval_epsilon=0.0))
    model = crafted_model(slope=3.0, offset=0.0)
    edges = np.arange(bins + 1) / bins
    # 1) resolution: counts only step at bin edges, and moving scores within their bins changes nothing
    m0 = evaluate(tiny, model, no_noise, tmp_path)
    for label, lows in recover_scores(m0).items():  # each step: a score in [grid[d], grid[d+1])
        highs = THRESHOLD_GRID[np.searchsorted(THRESHOLD_GRID, lows) + 1]
        assert all(((edges >= lo) & (edges < hi)).any() for lo, hi in zip(lows, highs))
    s = score_of_age(model, tiny["ages"])
    nudged = crafted_model(slope=3.0, offset=0.0)
    with torch.no_grad():
        nudged.head[3].bias[0] += 1e-3  # every score moves by < 1e-3, none crosses a bin edge here
    assert (np.floor(score_of_age(nudged, tiny["ages"]) * bins) == np.floor(s * bins)).all()
    assert evaluate(tiny, nudged, no_noise, tmp_path) == m0
    # 2) noise: the reply's histogram is not the true one, and asking again for the same weights returns the
    #    SAME reply (the coordinator cannot average the noise away by repeating a request)
    replies = [evaluate(tiny, model, site, tmp_path) for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]
    true_hist = score_histogram(tiny["labels"], s, bins)
    exact_counts = counts_from_histogram(true_hist)
    differ = 0
    for r in range(8):  # different weights (offset) -> fresh noise each time
        m = evaluate(tiny, crafted_model(3.0, offset=0.01 * r), site, tmp_path)
        ref = counts_from_histogram(score_histogram(tiny["labels"], score_of_age(crafted_model(3.0, 0.01 * r),
                                                                                  tiny["ages"]), bins))
        differ += int(not np.array_equal(np.asarray(m["tp"]), ref[:, 0]) or
                      not np.array_equal(np.asarray(m["fp"]), ref[:, 1]))
        assert m["num-examples"] == m["n-pos"] + m["n-neg"]
    assert differ >= 6, "noise should hide the exact histogram in most replies"
    assert exact_counts.shape == (len(THRESHOLD_GRID), 4)


def test_protect_matches_reference_counts_and_noise_scale() -> None:
    """protect() without noise = sklearn-free reference on bin lower edges; the noise has the Laplace scale."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200)
    pol = EvaluationPolicy(min_patients_per_class=5, score_bins=10, eval_epsilon=0.0)
    got = protect(y, s, pol, seed=1)
    ref = threshold_counts(y.astype(float), np.floor(s * 10) / 10, THRESHOLD_GRID)
    np.testing.assert_array_equal(got.counts, ref)
    assert (got.n_pos, got.n_neg) == (int(y.sum()), int(200 - y.sum()))
    noise = discrete_laplace((200_000,), 1.0, np.random.default_rng(0))
    # discrete Laplace with parameter e^-eps: variance 2 e^-eps / (1 - e^-eps)^2
    q = np.exp(-1.0)
    assert noise.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.03)
    assert protect(y[:8], s[:8], EvaluationPolicy(), seed=0).withheld
