"""common.evaluation.write_evaluation: files, keys, values consistent with common.metrics and sklearn, readable PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from common.evaluation import write_evaluation
from common.metrics import REPORT_METRICS, delong_test

FIGURES = ("roc.png", "pr.png", "calibration.png", "decision_curve.png")


def _cohort(n: int = 120, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = (0, 1)
    model = expit(rng.normal(-1 + 1.4 * y, 1.0))
    clinical = expit(rng.normal(-0.8 + 0.6 * y, 0.8))
    return [f"ISPY2-{100000 + i}" for i in range(n)], y, model, clinical


def test_report_directory_contents(tmp_path: Path) -> None:
    ids, y, s, c = _cohort()
    clin = pd.DataFrame({"patient_id": ids, "subtype": np.where(np.arange(len(ids)) % 2, "luminal", "triple_negative")})
    out = tmp_path / "eval"
    res = write_evaluation(out, ids, y, s, 0.31, model_name="fusion", data_name="held-out ISPY2",
                           reference_scores={"clinical-lr": c}, threshold_rule="Youden (w=0.5) on validation",
                           n_boot=300, seed=1, clinical=clin)
    for name in ("metrics.json", "predictions.csv", "report.md", *FIGURES):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m == res
    for k in REPORT_METRICS:
        assert set(m[k]) == {"value", "ci_low", "ci_high"}
        assert m[k]["ci_low"] <= m[k]["value"] <= m[k]["ci_high"]
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["threshold"] == 0.31 and "Youden" in m["threshold_rule"]
    assert m["n"]["value"] == len(ids) and m["n_pos"]["value"] == y.sum()
    ref = delong_test(y, s, c)
    assert m["delong"]["clinical-lr"]["p"] == pytest.approx(ref["p"])
    assert m["delong"]["clinical-lr"]["auc2"] == pytest.approx(roc_auc_score(y, c), abs=1e-12)
    # no threshold was supplied for the reference: its operating-point metrics stay undefined (null)
    assert m["references"]["clinical-lr"]["sensitivity"]["value"] is None
    assert m["references"]["clinical-lr"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, c), abs=1e-12)
    assert {r["level"] for r in m["subgroups"]} == {"luminal", "triple_negative"}
    # predictions stay patient-level and aligned
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(pred.columns[:3]) == ["patient_id", "label", "score"]
    assert pred["patient_id"].tolist() == ids and (pred["label"].to_numpy() == y).all()
    np.testing.assert_allclose(pred["score"], s)
    assert (pred["predicted"].to_numpy() == (s >= 0.31)).all()
    # report.md carries Table 1 with one row per model and the DeLong p
    md = (out / "report.md").read_text()
    assert "| Model | AUROC (95% CI) | AUPRC | Sensitivity | Specificity | PPV | NPV |" in md
    row = next(line for line in md.splitlines() if line.startswith("| fusion |"))
    assert f"{m['auroc']['value']:.3f} ({m['auroc']['ci_low']:.3f}–{m['auroc']['ci_high']:.3f})" in row
    assert next(line for line in md.splitlines() if line.startswith("| clinical-lr |")).rstrip(" |").endswith(
        f"{ref['p']:.3f}" if ref["p"] >= 0.001 else "<0.001")
    assert "n = 120" in md and "0.3100" in md and "validation" in md
    for name in FIGURES:
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300, name
        assert float(np.std(img[..., :3])) > 0.05, f"{name} looks blank"


def test_evaluate_cli_call_style_and_reference_threshold(tmp_path: Path) -> None:
    """The keyword style of common/evaluate_cli.py (ids/labels/context/manifest) works too."""
    ids, y, s, c = _cohort(80, seed=2)
    manifest = pd.DataFrame({"manufacturer": ["GE"] * 40 + ["SIEMENS"] * 40}, index=pd.Index(ids, name="patient_id"))
    context = {"site": "DUKE", "model": "/tmp/bundles/fedavg", "threshold_rule": "weighted_youden w=0.8"}
    res = write_evaluation(tmp_path, ids=ids, labels=y.astype(float), scores=s, threshold=0.4, manifest=manifest,
                           clinical=None, context=context, n_boot=100, reference_scores={"clin": c},
                           reference_thresholds={"clin": 0.3})
    assert res["model"] == "fedavg" and res["data"] == "DUKE" and res["threshold_rule"] == "weighted_youden w=0.8"
    assert res["context"] == context
    sens = ((c >= 0.3) & (y == 1)).sum() / y.sum()
    assert res["references"]["clin"]["sensitivity"]["value"] == pytest.approx(sens)
    assert {r["level"] for r in res["subgroups"]} == {"GE", "SIEMENS"}
    with pytest.raises(TypeError, match="only one"):
        write_evaluation(tmp_path, ids, y, s, 0.4, ids=ids)


def test_one_class_and_bad_input(tmp_path: Path) -> None:
    ids = [f"P{i}" for i in range(15)]
    y = np.zeros(15)
    s = np.linspace(0.05, 0.95, 15)
    res = write_evaluation(tmp_path / "one", ids, y, s, 0.52, model_name="m", data_name="tiny", n_boot=50)
    # scores 0.05 + k*0.9/14: k = 0..7 fall below 0.52 -> 8 of 15 negatives are true negatives
    assert res["auroc"]["value"] is None and res["specificity"]["value"] == pytest.approx(8 / 15)
    assert res["figures"] == {} and (tmp_path / "one" / "report.md").is_file()
    assert "—" in (tmp_path / "one" / "report.md").read_text()
    with pytest.raises(ValueError, match="differ in length"):
        write_evaluation(tmp_path / "bad", ids, y[:-1], s, 0.5, model_name="m", data_name="x")
    with pytest.raises(ValueError, match="duplicate patient id 'P0'"):
        write_evaluation(tmp_path / "dup", ["P0"] * 15, y, s, 0.5, model_name="m", data_name="x")
    with pytest.raises(ValueError, match="reference 'r' has 3 scores"):
        write_evaluation(tmp_path / "ref", ids, y, s, 0.5, model_name="m", data_name="x",
                         reference_scores={"r": s[:3]})
    assert not math.isnan(res["threshold"])
