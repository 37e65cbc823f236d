"""Statistics a reader needs to judge federated results: count-AUROC error bound, paired bootstrap differences,
federated-vs-pooled/local comparisons per held-out site, and the held-out site list taken from the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from common.delong import delong_test
from common.metrics_counts import THRESHOLD_GRID, auroc_error_bound_from_counts, auroc_from_counts, threshold_counts
from common.paired_bootstrap import contrast_ci, paired_auroc_difference, paired_auroc_draws
from simulation.arm_result import ArmResult
from simulation.heldout_compare import comparison_section, heldout_comparisons

# ---------------------------------------------------------------- count-based AUROC bound


def _score_sets(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """Scores built to make grid cells crowded: narrow bands, rounded values, exact grid points and ties."""
    if kind == 0:
        return rng.uniform(0.48, 0.53, n)
    if kind == 1:
        return np.round(rng.uniform(0.2, 0.3, n), 4)  # many exact ties across classes
    if kind == 2:  # exactly on grid points or just above them: the cell edges
        return rng.choice(THRESHOLD_GRID[1000:1006], n) + rng.choice([0.0, 1e-7], n)
    return 1 / (1 + np.exp(-rng.normal(0, 3, n)))


def test_count_auroc_error_never_exceeds_the_bound() -> None:
    rng = np.random.default_rng(3)
    ratios = []
    for t in range(200):
        n = int(rng.integers(4, 250))
        y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
        if y.min() == y.max():
            continue
        s = _score_sets(rng, n, t % 4)
        counts = threshold_counts(y, s)
        err = abs(auroc_from_counts(counts) - roc_auc_score(y, s))
        bound = auroc_error_bound_from_counts(counts)
        assert err <= bound + 1e-12, (t, err, bound)
        if bound > 0:
            ratios.append(err / bound)
    assert max(ratios) > 0.5  # the bound is not vacuous on these sets


def test_count_auroc_bound_hand_cases() -> None:
    # one grid cell [0.1, 0.1005) holds pos 0.10003 and neg 0.10001: exact counts it 1, the grid 1/2
    assert np.searchsorted(THRESHOLD_GRID, 0.10001, "right") == np.searchsorted(THRESHOLD_GRID, 0.10003, "right")
    y = np.array([1, 1, 0, 0])
    s = np.array([0.10003, 0.7, 0.10001, 0.3])
    counts = threshold_counts(y, s)
    # exact: (0.10003>0.10001) 1, (0.10003<0.3) 0, 0.7 beats both: 3/4; grid: the same-cell pair is a tie: 2.5/4
    assert roc_auc_score(y, s) == pytest.approx(0.75)
    assert auroc_from_counts(counts) == pytest.approx(0.625)
    assert auroc_error_bound_from_counts(counts) == pytest.approx(1 / 8)  # 1 shared pair / (2 * 2 * 2): tight
    # all four in one cell, positives on top: exact 1, grid 0.5, bound 4 / (2 * 4) = 0.5, tight again
    s2 = np.array([0.10004, 0.10003, 0.10001, 0.10002])
    c2 = threshold_counts(y, s2)
    assert roc_auc_score(y, s2) - auroc_from_counts(c2) == pytest.approx(auroc_error_bound_from_counts(c2)) == 0.5
    # exact ties across classes cost nothing: error 0 although the bound (0.5) allows it
    c3 = threshold_counts(y, np.full(4, 0.4))
    assert auroc_from_counts(c3) == pytest.approx(roc_auc_score(y, np.full(4, 0.4))) and \
        auroc_error_bound_from_counts(c3) == 0.5
    # summed counts of two sites: the bound of the pool, not of each site
    both = threshold_counts(y, s) + threshold_counts(y, s2)
    ys, ss = np.concatenate([y, y]), np.concatenate([s, s2])
    assert abs(auroc_from_counts(both) - roc_auc_score(ys, ss)) <= auroc_error_bound_from_counts(both) + 1e-12
    assert np.isnan(auroc_error_bound_from_counts(threshold_counts(np.ones(3), np.array([0.1, 0.2, 0.3]))))


# ---------------------------------------------------------------- paired bootstrap


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    common = rng.normal(0, 1, n)
    s1 = 1 / (1 + np.exp(-(1.2 * y + common + rng.normal(0, 0.7, n))))
    s2 = 1 / (1 + np.exp(-(0.7 * y + common + rng.normal(0, 0.7, n))))
    return y, s1, s2


def _stratified_resamples(y: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Independent re-implementation of the draws: default_rng(seed), positives then negatives, with replacement."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pi, ni = rng.integers(0, pos.size, (n_boot, pos.size)), rng.integers(0, neg.size, (n_boot, neg.size))
    return [np.concatenate([pos[pi[b]], neg[ni[b]]]) for b in range(n_boot)]


def test_paired_difference_matches_an_independent_sklearn_bootstrap() -> None:
    y, s1, s2 = _data(90, 1)
    res = paired_auroc_difference(y, s1, s2, n_boot=300, seed=7)
    # independent: the same draws (default_rng(seed): positives then negatives), one sklearn call per resample
    diffs = np.array([roc_auc_score(y[idx], s1[idx]) - roc_auc_score(y[idx], s2[idx])
                      for idx in _stratified_resamples(y, 300, 7)])
    assert res["difference"] == pytest.approx(roc_auc_score(y, s1) - roc_auc_score(y, s2), abs=1e-12)
    assert res["ci_low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    assert res["ci_high"] == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
    p_ref = max(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))), 1 / 300)
    assert res["p"] == pytest.approx(p_ref) and res["n_boot"] == 300


def test_paired_difference_agrees_with_delong_on_a_large_sample() -> None:
    y, s1, s2 = _data(500, 2)
    res = paired_auroc_difference(y, s1, s2, n_boot=2000, seed=0)
    dl = delong_test(y, s1, s2)
    assert res["difference"] == pytest.approx(dl["difference"], abs=1e-12)
    assert res["ci_low"] == pytest.approx(dl["diff_ci_low"], abs=0.01)
    assert res["ci_high"] == pytest.approx(dl["diff_ci_high"], abs=0.01)
    assert (res["p"] < 0.05) == (dl["p"] < 0.05)
    same = paired_auroc_difference(y, s1, s1, n_boot=200)
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p"] == 1.0


def test_contrast_against_the_mean_of_several_models() -> None:
    y, s1, s2 = _data(120, 4)
    s3 = np.random.default_rng(9).random(120)
    point, draws = paired_auroc_draws(y, np.vstack([s1, s2, s3]), n_boot=400, seed=1)
    res = contrast_ci(point, draws, np.array([1.0, -0.5, -0.5]))
    want = roc_auc_score(y, s1) - (roc_auc_score(y, s2) + roc_auc_score(y, s3)) / 2
    assert res["difference"] == pytest.approx(want, abs=1e-12)
    ref = draws[0] - draws[1:].mean(axis=0)
    assert res["ci_low"] == pytest.approx(np.percentile(ref, 2.5))


# ---------------------------------------------------------------- per-site comparison in the report


def _arm(exp: str, method: str, seed: int, y: np.ndarray, s: np.ndarray) -> ArmResult:
    arm = ArmResult(arm_id=f"{exp}__{method}__s{seed}", experiment=exp, method=method, seed=seed, train_sites=["x"])
    site = exp.split("heldout-", 1)[1]
    arm.predictions[site] = {"ids": [f"p{k}" for k in range(len(y))], "y": y.tolist(), "score": s.tolist()}
    return arm


def test_heldout_comparisons_per_site_mean_worst_and_where_federation_helps() -> None:
    rng = np.random.default_rng(5)
    arms, truth, data = [], {}, {}
    for site, local_strength in (("A", 0.2), ("B", 1.5)):  # local models are weak at A, strong at B
        y = (rng.random(150) < 0.4).astype(int)
        for seed in (0, 1):
            scores = {m: 1 / (1 + np.exp(-(k * y + rng.normal(0, 1, 150))))
                      for m, k in (("fedavg-lr", 1.0), ("clinical-lr", 1.05), ("local-X", local_strength),
                                   ("local-Y", local_strength / 2))}
            truth[site, seed] = {m: roc_auc_score(y, s) for m, s in scores.items()}
            data[site, seed] = (y, scores)
            arms += [_arm(f"heldout-{site}", m, seed, y, s) for m, s in scores.items()]
    comp = heldout_comparisons(arms, "clinical-lr", n_boot=200)
    assert set(comp["n_boot"]) == {200}
    for site in ("A", "B"):
        for seed in ("0", "1"):
            auc = truth[site, int(seed)]
            rows = comp[(comp.test_site == site) & (comp.seed == seed)].set_index("comparator")
            assert rows.loc["pooled", "difference"] == pytest.approx(auc["fedavg-lr"] - auc["clinical-lr"], abs=1e-12)
            mean_local = (auc["local-X"] + auc["local-Y"]) / 2
            assert rows.loc["mean-local", "difference"] == pytest.approx(auc["fedavg-lr"] - mean_local, abs=1e-12)
            assert rows.loc["best-local", "comparator_model"] == max(("local-X", "local-Y"), key=auc.get)
            assert rows.loc["local-Y", "auroc_comparator"] == pytest.approx(auc["local-Y"], abs=1e-12)
        # seed-mean row: difference = mean of the seeds' differences; CI from the resampled seed-mean difference,
        # recomputed here with sklearn on the same draws (default_rng(0): positives, then negatives)
        y = data[site, 0][0]
        allrow = comp[(comp.test_site == site) & (comp.seed == "all")].set_index("comparator").loc["pooled"]
        gaps = [truth[site, k]["fedavg-lr"] - truth[site, k]["clinical-lr"] for k in (0, 1)]
        assert allrow["difference"] == pytest.approx(np.mean(gaps), abs=1e-12)
        ref = [np.mean([roc_auc_score(y[idx], data[site, k][1]["fedavg-lr"][idx])
                        - roc_auc_score(y[idx], data[site, k][1]["clinical-lr"][idx]) for k in (0, 1)])
               for idx in _stratified_resamples(y, 200, 0)]
        assert allrow["ci_low"] == pytest.approx(np.percentile(ref, 2.5), abs=1e-12)
        assert allrow["ci_high"] == pytest.approx(np.percentile(ref, 97.5), abs=1e-12)
    text = "\n".join(comparison_section(comp, "clinical-lr"))
    assert "200 resamples" in text and "Federation helps most at **A**" in text
    gap = {s: np.mean([truth[s, k]["fedavg-lr"] - truth[s, k]["clinical-lr"] for k in (0, 1)]) for s in "AB"}
    assert f"mean {np.mean(list(gap.values())):+.3f}, worst site {min(gap, key=gap.get)}" in text
    fed = {s: np.mean([truth[s, k]["fedavg-lr"] for k in (0, 1)]) for s in "AB"}
    assert f"worst site {min(fed, key=fed.get)} {min(fed.values()):.3f}" in text
    # the target is one-sided (no worse than pooled by more than the gap): count it by hand at two gaps
    for tol in (0.01, 0.5):
        hit = sum(g >= -tol for g in gap.values())
        line = "\n".join(comparison_section(comp, "clinical-lr", tol))
        assert f"fed >= pooled - {tol} at {hit}/2 sites ({'target met' if hit == 2 else 'target NOT met'})" in line
    # a failed arm (NaN scores) or a one-class held-out site gives no comparison instead of a crashed report
    y = np.array([0, 1, 0, 1])
    broken = [_arm("heldout-Z", "fedavg-lr", 0, y, np.array([0.1, np.nan, 0.3, 0.4])),
              _arm("heldout-Z", "clinical-lr", 0, y, np.array([0.1, 0.2, 0.3, 0.4])),
              _arm("heldout-W", "fedavg-lr", 0, np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])),
              _arm("heldout-W", "clinical-lr", 0, np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]))]
    assert heldout_comparisons(broken, "clinical-lr").empty


# ---------------------------------------------------------------- held-out sites from the table


def test_heldout_sites_are_the_sites_with_40_labelled_patients(tmp_path) -> None:
    from common.paths import MAMA_MIA_TABLE
    from simulation.clinical_experiment import ClinicalExperimentConfig, build_folds, heldout_sites, load_mama_mia

    raw = pd.read_excel(MAMA_MIA_TABLE, sheet_name="dataset_info")
    raw = raw[raw["patient_id"].notna() & raw["pcr"].isin([0, 1])].reset_index(drop=True)
    big, s40, s39 = raw.iloc[:60].copy(), raw.iloc[60:100].copy(), raw.iloc[100:142].copy()
    big["site"], s40["site"], s39["site"] = "BIG", "S40", "S39"
    s39.loc[s39.index[:3], "pcr"] = np.nan  # 42 rows, 39 of them labelled
    path = tmp_path / "table.csv"
    pd.concat([big, s40, s39]).to_csv(path, index=False)
    data = load_mama_mia(path)
    assert heldout_sites(data, 40) == ("BIG", "S40")
    assert heldout_sites(data, 39) == ("BIG", "S40", "S39")
    cfg = ClinicalExperimentConfig(table=str(path), heldout_collections=())
    assert cfg.heldout is None  # the default: every site the table supports
    names = [f.name for f in build_folds(data, cfg, seed=0)]
    assert names == ["internal", "heldout-BIG", "heldout-S40"]
