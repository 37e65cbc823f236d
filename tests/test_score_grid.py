"""The coordinator-placed evaluation grid (common/score_grid.py): a monotone map that keeps AUROC and maps the
threshold back exactly, and that rescues protected evaluation of a barely trained model whose scores all
fall into one 0.05 bin."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from client.policy import EvaluationPolicy
from client.private_eval import protect
from common.metrics_counts import auroc_from_counts, threshold_counts, youden_from_counts
from common.protocol import ProtocolError, RoundConfig
from common.score_grid import IDENTITY, from_grid, next_grid, to_grid


def _early_model_scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a barely trained model: all within 0.47-0.49, but informative."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    logit = -0.08 + 0.02 * (0.8 * y + rng.normal(0, 1, n))
    return y, 1 / (1 + np.exp(-logit))


def test_map_is_monotone_and_inverts() -> None:
    s = np.linspace(0.35, 0.65, 500)
    for centre, scale in ((0.0, 1.0), (-0.3, 25.0), (2.0, 0.2)):
        g = to_grid(s, centre, scale)
        assert np.all(np.diff(g) > 0)
        assert np.all(np.diff(to_grid(np.linspace(1e-6, 1 - 1e-6, 999), centre, scale)) >= 0)  # saturates, never flips
        back = np.array([from_grid(v, centre, scale) for v in g])
        assert np.allclose(back, s, atol=1e-9)
    assert np.array_equal(to_grid(s, *IDENTITY), s)


def test_adaptive_grid_recovers_the_auroc_protected_counts_lose() -> None:
    y, s = _early_model_scores()
    exact = roc_auc_score(y, s)
    policy = EvaluationPolicy(min_patients_per_class=5, score_bins=20, eval_epsilon=0.0)
    fixed = auroc_from_counts(protect(y, s, policy, 0).counts)
    assert abs(fixed - 0.5) < 1e-12  # every patient in bin [0.45, 0.5): the protected reply says nothing
    grid, errors = IDENTITY, []
    for _ in range(4):  # what the server does round after round (same model here)
        counts = protect(y, s, policy, 0, grid=grid).counts
        errors.append(abs(auroc_from_counts(counts) - exact))
        grid = next_grid(counts, *grid)
    assert errors[0] > 0.1 and errors[-1] < 0.02, errors
    # the operating threshold found on the grid maps back to the model's own score scale
    counts = threshold_counts(y, to_grid(s, *grid))
    t = from_grid(youden_from_counts(counts), *grid)
    raw = threshold_counts(y, s, np.array([t]))[0]  # the same patients called positive on either scale
    on_grid = threshold_counts(y, to_grid(s, *grid), np.array([to_grid(np.array([t]), *grid)[0]]))[0]
    assert np.array_equal(raw, on_grid)
    sens, spec = raw[0] / (raw[0] + raw[3]), raw[2] / (raw[1] + raw[2])
    assert 0.47 < t < 0.49 and sens + spec > 1.2  # a useful cut inside the scores' narrow range


def test_round_config_bounds() -> None:
    rc = RoundConfig.from_dict({"eval-logit-centre": -0.5, "eval-logit-scale": 20.0})
    assert rc.eval_grid() == (-0.5, 20.0) and RoundConfig().eval_grid() == IDENTITY
    for bad in ({"eval-logit-scale": 0.0}, {"eval-logit-scale": 5000.0}, {"eval-logit-centre": 1e6}):
        with pytest.raises(ProtocolError, match="eval-logit"):
            RoundConfig.from_dict(bad)


def test_next_grid_keeps_the_grid_without_counts() -> None:
    assert next_grid(None, 0.3, 2.0) == (0.3, 2.0)
    empty = np.zeros((len(threshold_counts(np.array([0.0]), np.array([0.5]))), 4), dtype=np.int64)
    assert next_grid(empty, 0.3, 2.0) == (0.3, 2.0)
