"""The privacy experiment's pieces (simulation/privacy_experiment.py): method names, the protected-evaluation
cost against an independent AUROC, and the report/plot writer on a tidy table. The full run
(``simulation/run.py --experiment privacy --quick``) is a few minutes, so it is not in the default suite."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from simulation.privacy_experiment import PrivacyExperimentConfig, _plot, _report, eval_cost, method_name, seed_means


def test_method_names() -> None:
    assert [method_name(e) for e in (1.0, 3.0, 0.5, None)] == ["fedavg-dp-eps1", "fedavg-dp-eps3", "fedavg-dp-eps0.5",
                                                               "fedavg-nodp"]


def test_eval_cost_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    sites = {}
    for k in range(4):
        y = rng.integers(0, 2, 60).astype(float)
        sites[f"S{k}"] = (y, 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, 60)))))
    cost = eval_cost(sites, reps=30).set_index("setting")
    exact = roc_auc_score(np.concatenate([y for y, _ in sites.values()]), np.concatenate([s for _, s in sites.values()]))
    assert cost["exact_pooled_auroc"].iloc[0] == exact
    assert 0 < cost.loc["bins20", "mean_abs_error"] < 0.02  # ties inside a bin only
    assert cost.loc["bins20+noise0.5", "mean_abs_error"] >= cost.loc["bins20+noise1", "mean_abs_error"] * 0.8
    assert (cost["sites_withheld"] == 0).all()
    small = {"A": (np.array([0, 1, 1, 0.0]), np.array([0.1, 0.9, 0.8, 0.3]))}
    assert eval_cost({**sites, **small}, reps=2).set_index("setting").loc["bins20", "sites_withheld"] == 1


def test_report_and_plot(tmp_path: Path) -> None:
    rows = []
    for m, e, auc in (("fedavg-dp-eps1", 0.98, 0.55), ("fedavg-dp-eps3", 2.9, 0.6), ("fedavg-nodp", np.nan, 0.7)):
        rows.append(dict(experiment="privacy", method=m, train_sites="A;B", test_site="DUKE", metric="auroc", value=auc,
                         ci_low=auc - 0.1, ci_high=auc + 0.1, seed=0))
        rows.append(dict(experiment="privacy", method=m, train_sites="A;B", test_site="all", metric="epsilon", value=e,
                         ci_low=np.nan, ci_high=np.nan, seed=0))
    df = pd.DataFrame(rows)
    _plot(df, tmp_path / "auroc_vs_epsilon.png", "DUKE")
    fold = SimpleNamespace(train=["A", "B"], heldout_name="DUKE")
    report = _report(df, tmp_path, fold, SimpleNamespace(rounds=2, local_epochs=1), PrivacyExperimentConfig(), 1.0)
    text = report.read_text()
    assert (tmp_path / "auroc_vs_epsilon.png").stat().st_size > 1000
    assert "| fedavg-dp-eps3 | 0 | 3 | 2.90 | 0.600 [0.500, 0.700] |" in text and "fedavg-nodp" in text


def test_several_seeds_are_averaged(tmp_path: Path) -> None:
    """Two seeds: the summary is the per-method mean (hand-computed), the plot and report are written."""
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for m, e, auc in (("fedavg-dp-eps1", 1.0, 0.5), ("fedavg-dp-eps8", 8.0, 0.6), ("fedavg-nodp", np.nan, 0.7)):
            rows.append(dict(experiment="privacy", method=m, train_sites="A;B", test_site="DUKE", metric="auroc",
                             value=auc + shift, ci_low=auc + shift - 0.2, ci_high=auc + shift + 0.1, seed=seed))
            rows.append(dict(experiment="privacy", method=m, train_sites="A;B", test_site="all", metric="epsilon",
                             value=e - seed * 0.02 if e == e else e, ci_low=np.nan, ci_high=np.nan, seed=seed))
    df = pd.DataFrame(rows)
    means = seed_means(df, "DUKE")
    assert list(means.index) == ["fedavg-dp-eps1", "fedavg-dp-eps8", "fedavg-nodp"]
    assert np.isclose(means.loc["fedavg-dp-eps8", "auroc_mean"], 0.65)
    assert np.isclose(means.loc["fedavg-dp-eps8", "epsilon_spent"], 7.99)
    assert np.isclose(means.loc["fedavg-dp-eps1", "ci_low_mean"], 0.35) and means.loc["fedavg-nodp", "seeds"] == 2
    _plot(df, tmp_path / "p.png", "DUKE")
    fold = SimpleNamespace(train=["A", "B"], heldout_name="DUKE")
    text = _report(df, tmp_path, fold, SimpleNamespace(rounds=2, local_epochs=1),
                   PrivacyExperimentConfig(seeds=(0, 1)), 1.0).read_text()
    assert "| fedavg-dp-eps8 | 7.99 | 0.650 | 0.600-0.700 | [0.450, 0.750] |" in text
