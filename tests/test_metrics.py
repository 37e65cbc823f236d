"""common.metrics / metrics_counts / delong against independent references (scikit-learn, scipy, a slow
O(n^2) DeLong written here from the 1988 structural-components definition, hand-computed cases)."""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from common import metrics as M


def _data(rng: np.random.Generator, n: int, sep: float = 1.0, prev: float = 0.35, ties: bool = False,
          scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < prev).astype(int)
    y[0], y[1] = 0, 1  # both classes always present
    s = expit(scale * rng.normal(-0.5 + sep * y, 1.0))
    if ties:
        s = np.round(s, 1)
    return y, s


# ---------------------------------------------------------------- point metrics vs scikit-learn


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_auprc_brier_match_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y, s = _data(rng, 257, ties=ties)
    assert abs(M.auroc(y, s) - roc_auc_score(y, s)) < 1e-12
    assert abs(M.auprc(y, s) - average_precision_score(y, s)) < 1e-12
    assert abs(M.brier_score(y, s) - brier_score_loss(y, s)) < 1e-12
    pm = M.point_metrics(y, s, 0.5)
    assert abs(pm["auroc"] - roc_auc_score(y, s)) < 1e-12
    assert abs(pm["brier"] - brier_score_loss(y, s)) < 1e-12


def test_binary_cross_entropy_matches_sklearn_log_loss_and_hand_case() -> None:
    rng = np.random.default_rng(3)
    y, s = _data(rng, 200)
    assert M.binary_cross_entropy(y, s) == pytest.approx(log_loss(y, s), rel=1e-9)
    # hand case: -(log 0.8 + log(1 - 0.4)) / 2; scores 0 and 1 are clipped, never infinite
    assert M.binary_cross_entropy([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(M.binary_cross_entropy([1, 0], [0.0, 1.0]))
    assert math.isnan(M.binary_cross_entropy([], []))
    with pytest.raises(ValueError, match="probabilities"):
        M.binary_cross_entropy([1, 0], [1.5, 0.2])


def test_threshold_metrics_hand_case_and_confusion_matrix() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.7, 0.5, 0.2, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05])
    # positive iff s >= 0.5: TP = 3 (0.9, 0.7, 0.5), FN = 1, FP = 2 (0.6, 0.5), TN = 4
    tn, fp, fn, tp = confusion_matrix(y, (s >= 0.5).astype(int)).ravel()
    assert (tp, fp, tn, fn) == (3, 2, 4, 1)
    got = M.threshold_metrics(y, s, 0.5)
    assert got["sensitivity"] == pytest.approx(3 / 4) == tp / (tp + fn)
    assert got["specificity"] == pytest.approx(4 / 6) == tn / (tn + fp)
    assert got["ppv"] == pytest.approx(3 / 5)
    assert got["npv"] == pytest.approx(4 / 5)
    assert got["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    rep = M.binary_report(y, s, 0.5, n_boot=50, seed=0)
    for k in ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"):
        assert rep[k]["value"] == pytest.approx(got[k])
    assert rep["n"]["value"] == 10 and rep["n_pos"]["value"] == 4 and rep["prevalence"]["value"] == 0.4
    # PPV undefined when nothing is called positive
    assert math.isnan(M.threshold_metrics(y, s, 0.95)["ppv"])


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="labels must be 0/1"):
        M.auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        M.binary_report([0, 1], [0.1, np.nan], 0.5)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        M.threshold_counts([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="differ in length"):
        M.auroc([0, 1], [0.1])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_replicates_match_naive_loop() -> None:
    """The vectorised histogram bootstrap equals recomputing sklearn metrics on each stratified resample."""
    rng = np.random.default_rng(3)
    y, s = _data(rng, 90, ties=True)
    t, n_boot, seed = 0.45, 25, 11
    boot = M.bootstrap_metrics(y, s, t, n_boot=n_boot, seed=seed)
    pd_, nd_ = M._stratified_draws(y, n_boot, seed)  # the same draws
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for b in range(n_boot):
        idx = np.concatenate([pos[pd_[b]], neg[nd_[b]]])
        yb, sb = y[idx], s[idx]
        assert (yb == 1).sum() == pos.size  # stratified: class sizes preserved
        assert boot["auroc"][b] == pytest.approx(roc_auc_score(yb, sb), abs=1e-12)
        assert boot["auprc"][b] == pytest.approx(average_precision_score(yb, sb), abs=1e-12)
        assert boot["brier"][b] == pytest.approx(brier_score_loss(yb, sb), abs=1e-12)
        tn, fp, fn, tp = confusion_matrix(yb, (sb >= t).astype(int), labels=[0, 1]).ravel()
        assert boot["sensitivity"][b] == pytest.approx(tp / (tp + fn))
        assert boot["specificity"][b] == pytest.approx(tn / (tn + fp))


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(4)
    widths = {}
    for n in (100, 1600):
        y, s = _data(rng, n)
        rep = M.binary_report(y, s, 0.4, n_boot=1000, seed=0)
        for k in M.REPORT_METRICS:
            v = rep[k]
            assert v["ci_low"] <= v["value"] <= v["ci_high"], (n, k, v)
        widths[n] = {k: rep[k]["ci_high"] - rep[k]["ci_low"] for k in M.REPORT_METRICS}
    for k in M.REPORT_METRICS:  # 16x the patients: about a quarter of the width
        assert widths[1600][k] < 0.5 * widths[100][k], k
    # seeded: identical twice
    y, s = _data(np.random.default_rng(5), 200)
    a, b = (M.binary_report(y, s, 0.5, n_boot=200, seed=7) for _ in range(2))
    assert all(a[k] == b[k] for k in M.REPORT_METRICS)
    c = M.binary_report(y, s, 0.5, n_boot=200, seed=8)
    assert c["auroc"]["value"] == a["auroc"]["value"] and c["auroc"]["ci_low"] != a["auroc"]["ci_low"]


def test_bootstrap_speed_1000_resamples_300_patients() -> None:
    y, s = _data(np.random.default_rng(6), 300)
    M.binary_report(y, s, 0.5, n_boot=50)  # warm-up imports
    t0 = time.perf_counter()
    M.binary_report(y, s, 0.5, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 1.0


def test_one_class_report_is_nan_not_error() -> None:
    y = np.zeros(20, dtype=int)
    s = np.linspace(0.1, 0.9, 20)
    rep = M.binary_report(y, s, 0.5, n_boot=100)
    assert math.isnan(rep["auroc"]["value"]) and math.isnan(rep["sensitivity"]["value"])
    assert rep["specificity"]["value"] == pytest.approx(0.5)
    assert rep["specificity"]["ci_low"] <= 0.5 <= rep["specificity"]["ci_high"]


# ---------------------------------------------------------------- DeLong


def _slow_delong(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) structural components by explicit O(m*n) pair loops (independent reference)."""
    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = pos.size, neg.size
    v10 = np.zeros((2, m))
    v01 = np.zeros((2, n))
    for r, s in enumerate((s1, s2)):
        mat = np.array([[psi(s[i], s[j]) for j in neg] for i in pos])
        v10[r], v01[r] = mat.mean(axis=1), mat.mean(axis=0)
    auc = v10.mean(axis=1)
    s10 = np.array([[np.sum((v10[a] - auc[a]) * (v10[b] - auc[b])) / (m - 1) for b in range(2)] for a in range(2)])
    s01 = np.array([[np.sum((v01[a] - auc[a]) * (v01[b] - auc[b])) / (n - 1) for b in range(2)] for a in range(2)])
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc[0] - auc[1]) / math.sqrt(var)
    return auc[0], auc[1], z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_slow_structural_components(ties: bool) -> None:
    rng = np.random.default_rng(8)
    y, s1 = _data(rng, 120, sep=1.2, ties=ties)
    s2 = np.clip(s1 + rng.normal(0, 0.2, y.size), 0, 1)
    if ties:
        s2 = np.round(s2, 1)
    a1, a2, z, p = _slow_delong(y, s1, s2)
    got = M.delong_test(y, s1, s2)
    assert got["auc1"] == pytest.approx(a1, abs=1e-12) and got["auc2"] == pytest.approx(a2, abs=1e-12)
    assert got["auc1"] == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert got["z"] == pytest.approx(z, rel=1e-9)
    assert got["p"] == pytest.approx(p, rel=1e-9)
    assert got["difference"] == pytest.approx(a1 - a2, abs=1e-12)


def test_delong_se_agrees_with_bootstrap_se() -> None:
    rng = np.random.default_rng(9)
    y, s = _data(rng, 400, sep=1.0)
    d = M.delong_ci(y, s)
    boot_se = float(np.std(M.bootstrap_metrics(y, s, 0.5, n_boot=3000, seed=1)["auroc"], ddof=1))
    assert d["se"] == pytest.approx(boot_se, rel=0.15)
    assert d["ci_low"] < d["auc"] < d["ci_high"]
    assert d["ci_low"] == pytest.approx(d["auc"] - norm.ppf(0.975) * d["se"])


def test_delong_p_value_sanity() -> None:
    rng = np.random.default_rng(10)
    y, s = _data(rng, 300, sep=2.0)
    same = M.delong_test(y, s, s)
    assert same["p"] == 1.0 and same["z"] == 0.0
    assert M.delong_test(y, s, s**2)["p"] == pytest.approx(1.0)  # monotone transform: same ranking
    noise = rng.random(y.size)
    far = M.delong_test(y, s, noise)
    assert far["auc1"] > 0.8 and far["p"] < 1e-6 and far["z"] > 0
    assert M.delong_test(y, noise, s)["z"] == pytest.approx(-far["z"])
    with pytest.raises(ValueError, match="both classes"):
        M.delong_test(np.zeros(5), s[:5], s[:5])


# ---------------------------------------------------------------- threshold counts (federated state)


def test_counts_sum_over_sites_equals_pooled_counts() -> None:
    rng = np.random.default_rng(11)
    sites = [_data(rng, n) for n in (37, 80, 5)]
    sites.append((np.zeros(6, dtype=int), rng.random(6)))  # one-class site
    summed = sum(M.threshold_counts(y, s) for y, s in sites)
    pooled = M.threshold_counts(np.concatenate([y for y, _ in sites]), np.concatenate([s for _, s in sites]))
    assert summed.dtype == np.int64 and summed.shape == (len(M.THRESHOLD_GRID), 4)
    np.testing.assert_array_equal(summed, pooled)
    one = M.threshold_counts(*sites[-1])
    assert math.isnan(M.auroc_from_counts(one)) and M.class_sizes(one) == (0, 6)
    assert (one[:, 1] + one[:, 2] == 6).all()


def test_counts_match_confusion_matrix_and_grid() -> None:
    grid = M.THRESHOLD_GRID
    assert np.all(np.diff(grid) > 0) and grid[0] == 0.0 and grid[-1] == 1.0
    assert np.diff(grid).max() <= 0.0005 + 1e-12  # no coarse gap anywhere
    y, s = _data(np.random.default_rng(12), 150, ties=True)
    counts = M.threshold_counts(y, s)
    for t in (0.0, 0.2, 0.5, 0.7, 1.0):
        i = int(np.argmin(abs(grid - t)))
        tn, fp, fn, tp = confusion_matrix(y, (s >= grid[i]).astype(int), labels=[0, 1]).ravel()
        np.testing.assert_array_equal(counts[i], [tp, fp, tn, fn])
        m = M.metrics_from_counts(counts, t)
        exact = M.threshold_metrics(y, s, grid[i])
        for k in ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"):
            assert (math.isnan(m[k]) and math.isnan(exact[k])) or m[k] == pytest.approx(exact[k])
        assert m["n_pos"] == y.sum() and m["n_neg"] == (y == 0).sum()


def test_auroc_from_counts_exact_when_scores_lie_on_grid() -> None:
    rng = np.random.default_rng(13)
    grid = M.THRESHOLD_GRID
    y = (rng.random(300) < 0.4).astype(int)
    idx = np.clip(rng.normal(len(grid) / 2 + 150 * y, 300).astype(int), 0, len(grid) - 1)
    s = grid[idx]
    counts = M.threshold_counts(y, s)
    assert M.auroc_from_counts(counts) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = M.roc_from_counts(counts)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # every sklearn ROC vertex is on the counts ROC
    sk_fpr, sk_tpr, _ = roc_curve(y, s)
    pts = set(zip(np.round(fpr, 12), np.round(tpr, 12)))
    assert all((round(a, 12), round(b, 12)) in pts for a, b in zip(sk_fpr, sk_tpr))


SCENARIOS = {  # (logit mean of negatives, logit shift of positives, logit sd): realistic sigmoid outputs
    "wide": (-1.0, 1.2, 1.5),
    "confident": (-6.0, 5.0, 3.0),
    "focal_low_band": (-1.2, 0.3, 0.25),  # scores ~0.15-0.40
    "narrow_band": (0.0, 0.05, 0.04),  # scores ~0.48-0.53
    "very_narrow_band": (-1.0, 0.03, 0.02),  # scores ~0.26-0.29
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pooled_auroc_from_summed_site_counts_within_0005(scenario: str) -> None:
    mu, shift, sd = SCENARIOS[scenario]
    rng = np.random.default_rng(zlib.crc32(scenario.encode()))
    worst = 0.0
    for _ in range(10):
        ys, ss = [], []
        for site in range(3):  # three sites with different size, prevalence and a small site offset
            n = int(rng.integers(40, 200))
            y = (rng.random(n) < rng.uniform(0.2, 0.45)).astype(int)
            y[:2] = (0, 1)
            ys.append(y)
            ss.append(expit(rng.normal(mu + shift * y, sd) + 0.3 * sd * site))
        summed = sum(M.threshold_counts(y, s) for y, s in zip(ys, ss))
        exact = roc_auc_score(np.concatenate(ys), np.concatenate(ss))
        worst = max(worst, abs(M.auroc_from_counts(summed) - exact))
    assert worst < 0.005, worst


# ---------------------------------------------------------------- operating points


def test_youden_on_validation_applied_unchanged_to_test() -> None:
    rng = np.random.default_rng(14)
    yv, sv = _data(rng, 200, sep=1.3)
    yt, st = _data(rng, 150, sep=1.3)
    t = M.choose_threshold(yv, sv)
    # on validation, J at t is the maximum over sklearn's ROC (independent)
    fpr, tpr, _ = roc_curve(yv, sv)
    tv = M.threshold_metrics(yv, sv, t)
    assert tv["sensitivity"] + tv["specificity"] - 1 == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    assert t not in set(sv)  # midway between validation scores
    # applied unchanged to test
    rep = M.binary_report(yt, st, t, n_boot=50)
    tn, fp, fn, tp = confusion_matrix(yt, (st >= t).astype(int)).ravel()
    assert rep["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert rep["specificity"]["value"] == pytest.approx(tn / (tn + fp))
    # weighted Youden: w=0.8 favours sensitivity, w=0.2 specificity
    sens = {w: M.threshold_metrics(yv, sv, M.choose_threshold(yv, sv, w=w))["sensitivity"] for w in (0.2, 0.5, 0.8)}
    assert sens[0.8] >= sens[0.5] >= sens[0.2] and sens[0.8] > sens[0.2]
    for w in (0.2, 0.8):  # brute force over every cut
        tw = M.choose_threshold(yv, sv, w=w)
        best = max(w * tp_ + (1 - w) * (1 - fp_) for fp_, tp_ in zip(fpr, tpr))
        got = M.threshold_metrics(yv, sv, tw)
        assert w * got["sensitivity"] + (1 - w) * got["specificity"] == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        M.choose_threshold(np.ones(4), np.arange(4) / 4)


def test_youden_from_summed_counts_matches_pooled_choice() -> None:
    rng = np.random.default_rng(15)
    grid = M.THRESHOLD_GRID
    sites = []
    for n in (60, 90, 45):
        y = (rng.random(n) < 0.35).astype(int)
        y[:2] = (0, 1)
        sites.append((y, grid[np.clip(rng.normal(1200 + 250 * y, 250).astype(int), 0, len(grid) - 1)]))
    summed = sum(M.threshold_counts(y, s) for y, s in sites)
    yp = np.concatenate([y for y, _ in sites])
    sp = np.concatenate([s for _, s in sites])
    for w in (0.5, 0.8):
        t_fed = M.youden_from_counts(summed, w=w)
        t_pool = M.choose_threshold(yp, sp, w=w)
        j = lambda t: (lambda r: w * r["sensitivity"] + (1 - w) * r["specificity"])(M.threshold_metrics(yp, sp, t))  # noqa: E731
        assert j(t_fed) == pytest.approx(j(t_pool), abs=1e-12)
        mc = M.metrics_from_counts(summed, t_fed)
        assert w * mc["sensitivity"] + (1 - w) * mc["specificity"] == pytest.approx(j(t_pool), abs=1e-12)
    with pytest.warns(RuntimeWarning, match="one class"):
        M.youden_from_counts(M.threshold_counts(np.zeros(5), np.linspace(0, 1, 5)))


# ---------------------------------------------------------------- decision curve and calibration


def test_decision_curve_hand_computed() -> None:
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    dc = M.decision_curve(y, s, np.array([0.3, 0.5]))
    # t=0.3: TP=2 (0.9, 0.4), FP=1 (0.6): 2/5 - 1/5 * 0.3/0.7
    assert dc["net_benefit"][0] == pytest.approx(2 / 5 - 1 / 5 * 0.3 / 0.7)
    # t=0.5: TP=1, FP=1: 1/5 - 1/5 * 1
    assert dc["net_benefit"][1] == pytest.approx(0.0)
    assert dc["treat_all"][0] == pytest.approx(0.4 - 0.6 * 0.3 / 0.7)
    assert dc["treat_all"][1] == pytest.approx(0.4 - 0.6)
    assert (dc["treat_none"] == 0).all()
    assert M.net_benefit(y, s, 0.3) == pytest.approx(dc["net_benefit"][0])
    with pytest.raises(ValueError, match="strictly between"):
        M.decision_curve(y, s, np.array([0.0, 0.5]))


def test_calibration_bins_match_sklearn_and_slope_recovers_truth() -> None:
    rng = np.random.default_rng(16)
    s = rng.uniform(0.02, 0.98, 5000)
    y = (rng.random(s.size) < s).astype(int)  # perfectly calibrated
    for strategy in ("quantile", "uniform"):
        cal = M.calibration(y, s, n_bins=8, strategy=strategy)
        true, pred = calibration_curve(y, s, n_bins=8, strategy=strategy)
        np.testing.assert_allclose(cal["observed_rate"], true, atol=1e-12)
        np.testing.assert_allclose(cal["mean_predicted"], pred, atol=1e-12)
        assert cal["count"].sum() == s.size
    cal = M.calibration(y, s)
    assert cal["slope"] == pytest.approx(1.0, abs=0.12) and abs(cal["intercept"]) < 0.12 and abs(cal["citl"]) < 0.1
    # over-confident model: logit doubled -> slope ~ 0.5; compare the fit with a direct scipy MLE
    s2 = expit(2 * logit(s))
    cal2 = M.calibration(y, s2)
    x = logit(np.clip(s2, 1e-6, 1 - 1e-6))

    def nll(p: np.ndarray) -> float:
        z = p[0] + p[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    ref = minimize(nll, np.array([0.0, 1.0]), method="BFGS").x
    assert cal2["slope"] == pytest.approx(ref[1], abs=1e-3) and cal2["intercept"] == pytest.approx(ref[0], abs=1e-3)
    assert cal2["slope"] == pytest.approx(0.5, abs=0.08)
