"""The embedded cohort's early-treatment visit at I-SPY-style sites: the fraction of patients who have it and
the tumour change rule, checked against the real I-SPY2 tables read here independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from common.paths import ISPY2_CLINICAL, ISPY2_MRI_FEATURES
from simulation.cohort_sites import load_mama_mia
from simulation.early_visit import EARLY_VISIT_RATE, EarlyVisit, plan_early_visit


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    feats = pd.read_excel(ISPY2_MRI_FEATURES)
    clin = pd.read_excel(ISPY2_CLINICAL)
    feats["id"] = feats["CLINICAL-TRIAL-SUBJECT-ID"].astype(int)
    clin["id"] = pd.to_numeric(clin["Patient_ID"], errors="coerce")
    return feats.merge(clin[["id", "pCR"]], on="id")


@pytest.fixture(scope="module")
def mama() -> pd.DataFrame:
    return load_mama_mia()


def test_measured_anchor_follows_its_own_ftv_change(real: pd.DataFrame, mama: pd.DataFrame) -> None:
    ispy2 = mama[mama["patient_id"].str.startswith("ISPY2_")]
    measured = dict(zip(real["id"], real["FTV_pch_T0_T1"]))
    n = 0
    for pid, pcr in zip(ispy2["patient_id"], ispy2["pcr"]):
        num = int(pid.split("_")[1])
        if num not in measured or pcr != pcr:
            continue
        plan = plan_early_visit("ISPY2", pid, int(pcr), seed=0)
        assert plan is not None and plan.present and plan.source == "measured"
        assert plan.ftv_pch == pytest.approx(measured[num])
        n += 1
    assert n > 300  # nearly all 384 measured patients are MAMA-MIA anchors


def test_unmeasured_anchors_draw_by_pcr_at_the_realistic_rate(real: pd.DataFrame, mama: pd.DataFrame) -> None:
    ispy1 = mama[mama["patient_id"].str.startswith("ISPY1_") & mama["pcr"].isin([0, 1])]
    plans = [(int(pcr), plan_early_visit("ISPY1", pid, int(pcr), seed=s))
             for s in (0, 1) for pid, pcr in zip(ispy1["patient_id"], ispy1["pcr"])]
    present = np.array([p.present for _, p in plans])
    n = len(present)
    assert abs(present.mean() - EARLY_VISIT_RATE) < 3 * np.sqrt(0.8 * 0.2 / n)
    pools = {c: set(np.round(real.loc[real["pCR"] == c, "FTV_pch_T0_T1"], 6)) for c in (0, 1)}
    drawn = {0: [], 1: []}
    for pcr, p in plans:
        if p.present:
            assert p.source == f"drawn_pcr{pcr}" and round(p.ftv_pch, 6) in pools[pcr]
            drawn[pcr].append(p.ftv_pch)
    # the real medians: pCR tumours shrink more (about -62 % vs -39 %); the draws keep that order
    assert np.median(drawn[1]) < np.median(drawn[0]) - 10
    real_med = real.groupby("pCR")["FTV_pch_T0_T1"].median()
    assert abs(np.median(drawn[1]) - real_med[1]) < 10 and abs(np.median(drawn[0]) - real_med[0]) < 10
    assert plan_early_visit("DUKE", "DUKE_001", 1, seed=0) is None  # other collections: the phantom's own rule
    assert plan_early_visit("ISPY1", ispy1["patient_id"].iloc[0], 0, seed=4) == \
        plan_early_visit("ISPY1", ispy1["patient_id"].iloc[0], 0, seed=4)


def test_diameter_scale_is_the_cube_root_of_the_volume_ratio() -> None:
    assert EarlyVisit(True, -50.0, "measured").diameter_scale == pytest.approx(0.5 ** (1 / 3))
    assert EarlyVisit(True, -100.0, "measured").diameter_scale == pytest.approx(0.3)
    assert EarlyVisit(True, 700.0, "measured").diameter_scale == pytest.approx(1.3)


def test_written_cohort_has_the_second_study_in_the_patient_folder(tmp_path: Path, real: pd.DataFrame) -> None:
    from simulation.cohort import write_cohort

    out = write_cohort(tmp_path / "c", sites=["AAI"], patients_per_site=4, seed=2, scale=0.15, early_visit=True,
                       workers=1, progress=False)
    truth = pd.read_csv(out / "truth.csv")
    measured = dict(zip(real["id"], real["FTV_pch_T0_T1"]))
    for r in truth.itertuples():
        plan = plan_early_visit("ISPY2", r.anchor_id, int(r.pcr), seed=2)
        assert bool(r.early_visit) == plan.present and r.early_ftv_source == plan.source
        studies = sorted(p for p in (out / "AAI" / "dicom" / r.patient_id).iterdir())
        assert len(studies) == (2 if plan.present else 1)
        if not plan.present:
            continue
        num = int(str(r.anchor_id).split("_")[1])
        if num in measured:
            assert r.early_ftv_pch == pytest.approx(measured[num], abs=1e-3)
        assert r.early_visit_scale == pytest.approx(plan.diameter_scale, abs=1e-4)
        dates = []
        for st in studies:
            f = next(p for p in st.rglob("*.dcm"))
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            dates.append(ds.StudyDate)
            assert ds.PatientID == r.patient_id
        gap = (pd.Timestamp(max(dates)) - pd.Timestamp(min(dates))).days
        assert str(r.early_visit_date) == max(dates) and 18 <= gap <= 34
