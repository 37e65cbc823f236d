"""Report writer, resume and site partitioning on synthetic rows (fast; no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from simulation.arm_result import POOLED, ROW_COLUMNS, ArmResult, evaluate_predictions, metric_rows, results_frame
from simulation.arm_store import run_cached
from simulation.partition import assign_from_table, group_small_sites, make_partition, split_caches
from simulation.report import write_report
from simulation.summaries import cross_site, delong_table, heldout_summary


def _arm(experiment: str, method: str, seed: int, sites: dict[str, tuple[np.ndarray, np.ndarray]],
         train_sites: list[str]) -> ArmResult:
    arm = ArmResult(arm_id=f"{experiment}__{method}__s{seed}", experiment=experiment, method=method, seed=seed,
                    train_sites=train_sites, threshold=0.5)
    for site, (y, s) in sites.items():
        arm.predictions[site] = {"ids": [f"{site}/{k}" for k in range(len(y))], "y": y.tolist(), "score": s.tolist()}
        rep = evaluate_predictions(y, s, 0.5, n_boot=50, seed=seed)
        arm.rows += metric_rows(experiment, method, train_sites, site, seed, rep, n=len(y), n_pos=int(y.sum()))
    return arm


@pytest.fixture(scope="module")
def synthetic_arms() -> list[ArmResult]:
    """Two held-out folds x three methods x two seeds; 'good' separates classes better than the baseline."""
    rng = np.random.default_rng(0)
    arms = []
    for seed in (0, 1):
        for held, train in (("A", ["B", "C"]), ("B", ["A", "C"])):
            data = {}
            for site in train + [POOLED, held]:
                y = (rng.random(80) < 0.35).astype(float)
                data[site] = y
            for method, strength in (("clinical-lr", 0.6), ("good", 2.5), ("fedavg", 1.0)):
                preds = {s: (y, 1 / (1 + np.exp(-(strength * (y - 0.5) + rng.normal(0, 1, len(y))))))
                         for s, y in data.items()}
                arm = _arm(f"heldout-{held}", method, seed, preds, train)
                if method == "fedavg":
                    arm.history = [{"round": r, "val_auroc": 0.5 + 0.05 * r} for r in range(1, 4)]
                arms.append(arm)
    return arms


def test_metric_rows_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.3).astype(float)
    s = (rng.random(200) + 0.4 * y) / 1.4
    rows = metric_rows("heldout-X", "m", ["B", "A"], "X", 3, evaluate_predictions(y, s, 0.6, n_boot=100), n=200,
                       n_pos=int(y.sum()))
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == [c for c in ROW_COLUMNS if c in frame.columns] or set(ROW_COLUMNS) <= set(frame)
    auc = frame.loc[frame.metric == "auroc"].iloc[0]
    assert auc.value == pytest.approx(roc_auc_score(y, s), abs=1e-3)  # up to the metric grid
    assert auc.ci_low <= auc.value <= auc.ci_high
    sens = frame.loc[frame.metric == "sensitivity", "value"].iloc[0]
    assert sens == pytest.approx(((s >= 0.6) & (y == 1)).sum() / y.sum())
    assert set(frame.train_sites) == {"A;B"} and set(frame.seed) == {3}
    assert frame.loc[frame.metric == "n", "value"].iloc[0] == 200


def test_write_report_structure(synthetic_arms: list[ArmResult], tmp_path) -> None:
    path = write_report(synthetic_arms, tmp_path, title="synthetic", config={"x": 1}, semi_synthetic=True,
                        notes=["note one"])
    assert path == tmp_path / "report.md"
    res = pd.read_csv(tmp_path / "results.csv")
    assert list(res.columns) == list(ROW_COLUMNS)
    assert res["experiment"].str.contains("heldout").all()
    cs = json.loads((tmp_path / "cross_site.json").read_text())
    # {data_site: {model_owner: {metric: value}}}; held-out site A only seen by models trained without it
    assert set(cs) == {"A", "B", "C", POOLED}
    assert all(isinstance(v, dict) and all(isinstance(m, dict) and "auroc" in m for m in v.values())
               for v in cs.values())
    owners_a = set(cs["A"])
    assert "good [heldout-A]" in owners_a and "good [heldout-B]" in owners_a
    md = path.read_text()
    for section in ("SEMI-SYNTHETIC", "## Held-out institutions", "## Table 1", "## DeLong tests",
                    "## Federated training", "## Configuration", "## Library versions", "worst",
                    "## Federated vs pooled (`clinical-lr`)", "fed - pooled: mean", "+/- bound"):
        assert section in md, section
    comp = pd.read_csv(tmp_path / "heldout_comparisons.csv")
    assert set(comp["test_site"]) == {"A", "B"} and (comp["n_boot"] >= 2000).all()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "federated_rounds.png" in pngs
    for kind in ("roc", "decision", "calibration"):
        assert any(p.startswith(f"{kind}_heldout-A") for p in pngs), (kind, pngs)
    assert json.loads((tmp_path / "versions.json").read_text())["numpy"] == np.__version__


def test_heldout_summary_mean_and_worst(synthetic_arms: list[ArmResult]) -> None:
    frame = results_frame(synthetic_arms)
    hs = heldout_summary(frame).set_index("method")
    for method in ("good", "clinical-lr"):
        per_site = {}
        for site in ("A", "B"):
            vals = [roc_auc_score(a.predictions[site]["y"], a.predictions[site]["score"]) for a in synthetic_arms
                    if a.method == method and a.experiment == f"heldout-{site}"]
            per_site[site] = float(np.mean(vals))
        assert hs.loc[method, "A"] == pytest.approx(per_site["A"], abs=2e-3)
        assert hs.loc[method, "mean"] == pytest.approx(np.mean(list(per_site.values())), abs=2e-3)
        assert hs.loc[method, "worst"] == pytest.approx(min(per_site.values()), abs=2e-3)
        assert hs.loc[method, "worst_site"] == min(per_site, key=per_site.get)


def test_delong_against_baseline(synthetic_arms: list[ArmResult]) -> None:
    from scipy.stats import norm

    dl = delong_table(synthetic_arms)
    assert set(dl["method"]) == {"good", "fedavg"}
    row = dl[(dl.method == "good") & (dl.test_site == "A") & (dl.seed == 0)].iloc[0]
    assert row.auroc > row.auroc_baseline and row.p < 0.05
    assert 0 <= dl["p"].min() and dl["p"].max() <= 1
    assert math.isclose(row.p, 2 * norm.sf(abs(row.z)), rel_tol=1e-6)


def test_cross_site_means_over_seeds(synthetic_arms: list[ArmResult]) -> None:
    cs = cross_site(synthetic_arms)
    vals = [roc_auc_score(a.predictions["C"]["y"], a.predictions["C"]["score"]) for a in synthetic_arms
            if a.method == "good" and a.experiment == "heldout-A"]
    assert cs["C"]["good [heldout-A]"]["auroc"] == pytest.approx(np.mean(vals), abs=2e-3)
    assert cs["C"]["good [heldout-A]"]["n_seeds"] == 2


def test_run_cached_resumes(tmp_path) -> None:
    calls = []

    def compute() -> ArmResult:
        calls.append(1)
        return ArmResult(arm_id="x", experiment="heldout-A", method="m", seed=0, train_sites=["B"],
                         rows=[{"experiment": "heldout-A", "metric": "auroc", "value": 0.7}])

    first = run_cached(tmp_path, "x", compute)
    second = run_cached(tmp_path, "x", compute)
    assert len(calls) == 1 and second[0].rows == first[0].rows
    assert (tmp_path / "x.json").is_file()
    run_cached(tmp_path, "x", compute, resume=False)
    assert len(calls) == 2


def test_group_small_sites_hand_case() -> None:
    assign = {f"p{i}": s for i, s in enumerate(["A"] * 50 + ["B"] * 5 + ["C"] * 7 + ["D"] * 3 + ["E"] * 40)}
    new, groups = group_small_sites(assign, min_site_size=10, keep=["D"])
    assert groups["SMALL"] == ["B", "C"] and groups["D"] == ["D"]
    assert sum(1 for s in new.values() if s == "SMALL") == 12
    assert sum(1 for s in new.values() if s == "D") == 3
    part = make_partition(assign, key="site", min_site_size=10, keep=["D"])
    assert part.sizes() == {"A": 50, "D": 3, "E": 40, "SMALL": 12}
    assert set(part.site_of()) == set(assign)


def test_assign_from_mama_mia_table() -> None:
    from common.paths import MAMA_MIA_TABLE

    table = pd.read_excel(MAMA_MIA_TABLE, sheet_name="dataset_info", usecols=["patient_id", "site", "dataset",
                                                                              "manufacturer", "scanner_model"])
    by_site = assign_from_table(table, by="site")
    assert sum(1 for s in by_site.values() if s == "DUKE") == (table.site == "DUKE").sum()
    by_coll = assign_from_table(table, by="collection")
    assert set(by_coll.values()) == {"DUKE", "ISPY1", "ISPY2", "NACT"}
    by_scanner = assign_from_table(table, by="scanner")
    assert len(set(by_scanner.values())) > 3


def test_split_caches(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "volumes").mkdir(parents=True)
    (src / "prep_config.json").write_text(json.dumps({"config": {}, "hash": "h"}))
    ids = [f"P{i}" for i in range(6)]
    for pid in ids:
        np.save(src / "volumes" / f"{pid}.npy", np.zeros((1, 2, 2, 2), np.float16))
    pd.DataFrame({"patient_id": ids, "site": "X", "label": [0, 1] * 3, "volume": [f"volumes/{p}.npy" for p in ids],
                  "prep_hash": "h"}).to_csv(src / "manifest.csv", index=False)
    pd.DataFrame({"patient_id": ids, "site": "X", "age": range(6)}).to_csv(src / "clinical.csv", index=False)
    before = (src / "manifest.csv").read_text()
    out = split_caches([src], {"P0": "S1", "P1": "S1", "P2": "S2", "P3": "S2", "P4": "S2"}, tmp_path / "sites")
    assert sorted(out) == ["S1", "S2"]
    man = pd.read_csv(out["S2"] / "manifest.csv")
    assert sorted(man.patient_id) == ["P2", "P3", "P4"] and set(man.site) == {"S2"}
    assert (out["S2"] / "volumes" / "P3.npy").is_file() and not (out["S1"] / "volumes" / "P3.npy").exists()
    assert sorted(pd.read_csv(out["S1"] / "clinical.csv").patient_id) == ["P0", "P1"]
    assert (src / "manifest.csv").read_text() == before  # source untouched
