"""The federated-recipe ablation's statistics (simulation/ablation.py) against hand / sklearn computations;
the runs themselves are long (docs/experiments.md) and not in the suite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from simulation.ablation import RECIPES, local_mean, markdown, paired_diff, recipe_config, summarise
from simulation.experiment_config import preset


def _row(recipe: str, seed: int, y: np.ndarray, s: np.ndarray, site: str = "DUKE") -> dict:
    return {"recipe": recipe, "method": recipe, "test_site": site, "seed": seed, "auroc": roc_auc_score(y, s),
            "ci_low": 0.0, "ci_high": 1.0, "ids": [f"p{i}" for i in range(len(y))], "y": y.tolist(),
            "score": s.tolist()}


def _data(seed: int, signal: float, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)]
    return y, signal * y + rng.normal(0, 1, n)


def test_paired_difference_matches_sklearn_and_is_zero_for_the_same_model() -> None:
    y, strong = _data(0, 1.5)
    _, weak = _data(1, 0.3)
    a = [_row("fed", 0, y, strong), _row("fed", 1, y, strong * 2)]
    b = [_row("pooled", 0, y, weak), _row("pooled", 1, y, weak)]
    d, lo, hi = paired_diff(a, b, n_boot=400)
    assert d == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))  # rank-invariant: both seeds equal
    assert lo < d < hi and lo > 0  # a strong vs a weak score on 80 patients: the CI excludes 0
    assert paired_diff(a, a, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same held-out patients"):
        paired_diff([_row("fed", 0, y[::-1], strong[::-1]) | {"ids": list("x" * 80)}], b[:1], n_boot=5)


def test_summary_means_over_seeds_and_local_mean() -> None:
    y, s1 = _data(0, 1.0)
    _, s2 = _data(2, 0.5)
    rows = pd.DataFrame([_row("pooled", 0, y, s1), _row("pooled", 1, y, s2), _row("fedavg-6x1", 0, y, s2),
                         _row("fedavg-6x1", 1, y, s1), _row("local", 0, y, s1), _row("local", 0, y, s2)])
    assert local_mean(rows).query("recipe == 'local-mean'")["auroc"].item() == pytest.approx(
        (roc_auc_score(y, s1) + roc_auc_score(y, s2)) / 2)
    summ = summarise(rows, n_boot=100).set_index("recipe")
    mean = (roc_auc_score(y, s1) + roc_auc_score(y, s2)) / 2
    assert summ.loc["fedavg-6x1", "auroc_mean"] == pytest.approx(mean)
    # seed by seed: (s2 - s1) + (s1 - s2) -> 0
    assert summ.loc["fedavg-6x1", "minus_pooled"] == pytest.approx(0.0, abs=1e-12)
    assert summ.loc["fedavg-6x1", "minus_local_mean"] == pytest.approx(mean - summ.loc["local-mean", "auroc_mean"])
    text = markdown(summ.reset_index(), "t", [])
    assert "| fedavg-6x1 | DUKE | 2 |" in text and "worst site" in text


def test_recipes_keep_compute_equal() -> None:
    base = preset("default")
    for name, r in RECIPES.items():
        cfg = recipe_config(base, name)
        assert cfg.arms == (r.arm,) and cfg.epochs == base.epochs
        if r.arm.startswith("fed"):
            assert cfg.rounds * cfg.local_epochs == base.epochs, name
    assert recipe_config(base, "fedavg-6x1-lr2e-3").train.lr == 2e-3


def test_heldout_rows_take_each_site_from_the_fold_that_held_it_out() -> None:
    """A local model of fold heldout-DUKE is also scored on AAI's internal test split: not an AAI held-out row."""
    from types import SimpleNamespace

    from simulation.ablation import heldout_rows

    def arm(fold: str, train: list[str], site: str, value: float) -> SimpleNamespace:
        return SimpleNamespace(experiment=fold, train_sites=train, method="local-AAE", seed=0, predictions={},
                               rows=[{"metric": "auroc", "test_site": site, "value": value, "ci_low": 0, "ci_high": 1}])

    arms = [arm("heldout-DUKE", ["AAE"], "AAI", 0.9), arm("heldout-AAI", ["AAE"], "AAI", 0.6),
            arm("heldout-DUKE", ["AAE"], "DUKE", 0.7)]
    rows = heldout_rows(arms, "local", ("DUKE", "AAI"))
    assert sorted((r["test_site"], r["auroc"]) for r in rows) == [("AAI", 0.6), ("DUKE", 0.7)]
