"""The real longitudinal experiment (I-SPY2 MRI measurements T0..T2): data join, fixed transforms, folds
that keep the held-out site out of training, and DeLong rows checked against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from simulation.longitudinal_data import VISIT_SETS, design, load_longitudinal, transform
from simulation.longitudinal_experiment import LongitudinalConfig, run_longitudinal_experiment


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_longitudinal()


def test_join_keeps_every_labelled_patient_with_a_site(table: pd.DataFrame) -> None:
    raw = pd.read_excel(Path(__file__).resolve().parent.parent / "data/ispy2/Multi-feature-MRI-NACT-Data.xlsx")
    assert len(table) == len(raw) == 384  # every patient joins to a label and an I-SPY2 site
    assert table["patient_id"].is_unique and set(table["pCR"].unique()) == {0, 1}
    assert table["site"].str.fullmatch(r"AA[A-Z]").all()
    assert (table["site"] == "AAI").sum() == 74 and (table["site"] == "AAN").sum() == 62


def test_transforms_are_patient_independent(table: pd.DataFrame) -> None:
    """A subset's inputs equal the subset of everyone's inputs: no statistic is fitted on patients."""
    X_all, names = design(table, "t0-t2")
    idx = np.arange(0, len(table), 7)
    X_sub, names_sub = design(table.iloc[idx].reset_index(drop=True), "t0-t2")
    assert names == names_sub and np.allclose(X_all[idx], X_sub)
    assert names[:2] == ["HR", "HER2"] and len(names) == 2 + 12
    assert transform("FTV_pch_T0_T1", pd.Series([-50.0, 1500.0, np.nan]))[:2].tolist() == [-0.5, 2.0]
    assert np.isnan(transform("FTV_pch_T0_T1", pd.Series([np.nan]))[0])
    assert transform("VOLUME_TUM_BLU_V10", pd.Series([np.e - 1]))[0] == pytest.approx(1.0)


def test_experiment_heldout_sites_never_train_and_delong_matches(tmp_path: Path, table: pd.DataFrame) -> None:
    cfg = LongitudinalConfig(visit_sets=("clinical", "t0-t2"), heldout=("AAN",), seeds=(0,),
                             methods=("clinical-lr", "fedavg-lr"), n_boot=50)
    arms, report = run_longitudinal_experiment(tmp_path, cfg, progress=False)
    held = set(table.loc[table["site"] == "AAN", "patient_id"])
    heldout_arms = [a for a in arms if a.experiment == "heldout-AAN"]
    assert {a.method for a in heldout_arms} == {"pooled-lr@clinical", "pooled-lr@t0-t2", "fedavg-lr@clinical",
                                                "fedavg-lr@t0-t2"}
    for arm in heldout_arms:
        trained = {p for ids in arm.train_patients.values() for p in ids}
        assert trained and not trained & held, arm.method
        assert "AAN" not in arm.train_sites
        assert set(arm.predictions["AAN"]["ids"]) == held
    by = {a.method: a for a in heldout_arms}
    pred, ref = by["pooled-lr@t0-t2"].predictions["AAN"], by["pooled-lr@clinical"].predictions["AAN"]
    auc, auc_ref = roc_auc_score(pred["y"], pred["score"]), roc_auc_score(ref["y"], ref["score"])
    rows = {(r["metric"], r["test_site"]): r for r in by["pooled-lr@t0-t2"].rows}
    assert rows[("auroc", "AAN")]["value"] == pytest.approx(auc, abs=1e-9)
    assert rows[("auroc_diff_vs_clinical", "AAN")]["value"] == pytest.approx(auc - auc_ref, abs=1e-9)
    assert 0.0 <= rows[("delong_p_vs_clinical", "AAN")]["value"] <= 1.0
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["metric"]) >= {"auroc", "auroc_diff_vs_clinical", "delong_p_vs_clinical"}
    summary = pd.read_csv(tmp_path / "visit_summary.csv")
    assert set(summary["visit_set"]) == {"clinical", "t0-t2"}
    text = report.read_text()
    assert "## AUROC by visit set" in text and (tmp_path / "plots" / "auroc_by_visit.png").stat().st_size > 0
    assert VISIT_SETS == ("clinical", "t0", "t0-t1", "t0-t2")
