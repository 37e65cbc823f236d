"""Issue 17 analyses on real cache files: acquisition audit vs scipy, subgroup AUROC/CI vs the project's
bootstrap on the subset, small and unavailable subgroups, explanations (MONAI Grad-CAM, Captum IG) through
``fedpcr evaluate --explain``, tumour-box geometry and localisation scores, held-out subgroup rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import expit

from common.analysis.explain import ExplainConfig, Explanation, blurred, explain_one, localisation
from common.analysis.site_report import run_analyses
from common.analysis.subgroups import heldout_subgroups, subgroup_attributes, subgroup_table
from common.analysis.tumour_box import centred_box
from common.config import TrainConfig
from common.data import PCRDataset, load_cache
from common.metrics import binary_report
from tests.cache_factory import make_cache


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """A 60-patient cache whose manifest/clinical files carry varied acquisition values and edge cases."""
    path = make_cache(tmp_path_factory.mktemp("an"), "SITEA", n=60, seed=3, signal="both")
    rng = np.random.default_rng(7)
    man = pd.read_csv(path / "manifest.csv", dtype={"patient_id": str})
    n = len(man)
    man["repetition_time"] = rng.uniform(3.5, 6.0, n).round(2)
    echo = rng.uniform(1.2, 2.5, n).round(2)
    echo[:6] = np.nan  # missing for six patients: n used = 54
    man["echo_time"] = echo
    man["field_strength"] = rng.choice([1.5, 3.0], n)
    man["manufacturer"] = rng.choice(["GE", "SIEMENS", "PHILIPS"], n)
    man["model"] = rng.choice(["Avanto", "Skyra"], n)
    man["phase_times"] = [f"0;{90 + d};{180 + 2 * d};{270 + 3 * d}" for d in rng.integers(0, 40, n)]
    man.to_csv(path / "manifest.csv", index=False)
    clin = pd.read_csv(path / "clinical.csv", dtype={"patient_id": str})
    clin["her2"] = np.nan  # HER2 status unknown at this site -> unavailable
    clin["menopause"] = 0
    clin.loc[:2, "menopause"] = 1  # three post-menopausal patients -> counts only
    clin.to_csv(path / "clinical.csv", index=False)
    cache = load_cache(path)
    ids = cache.labelled_ids()
    y = cache.labels(ids)
    scores = expit(rng.normal(1.2 * y - 0.6, 1.0) + 2.0 * (man.set_index("patient_id").loc[ids, "repetition_time"] - 4.7))
    return cache, ids, y, np.asarray(scores, float)


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg written out (independent of scipy's false_discovery_control)."""
    m = p.size
    order = np.argsort(p)
    adj = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def test_acquisition_audit_matches_scipy(tmp_path: Path, site) -> None:
    cache, ids, y, s = site
    run_analyses(tmp_path, ids, y, s, manifest=cache.manifest.loc[ids], clinical=cache.clinical, n_boot=200)
    audit = pd.read_csv(tmp_path / "acquisition_audit.csv").set_index("parameter")
    assert {"parameter", "n", "rho", "p", "p_fdr", "test"} <= set(audit.reset_index().columns)
    man = cache.manifest.loc[ids]
    for param in ("repetition_time", "echo_time", "field_strength"):
        x = man[param].to_numpy(float)
        keep = np.isfinite(x)
        ref = stats.spearmanr(x[keep], s[keep])
        assert audit.loc[param, "n"] == keep.sum()
        assert audit.loc[param, "rho"] == pytest.approx(ref.statistic, abs=1e-12)
        assert audit.loc[param, "p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert audit.loc["echo_time", "n"] == len(ids) - 6
    # temporal resolution derived from phase_times: median post-contrast interval = 90 + d seconds
    d = np.array([float(t.split(";")[2]) - float(t.split(";")[1]) for t in man["phase_times"]])
    assert audit.loc["temporal_resolution", "rho"] == pytest.approx(stats.spearmanr(d, s).statistic, abs=1e-12)
    groups = [s[(man["manufacturer"] == v).to_numpy()] for v in ("GE", "PHILIPS", "SIEMENS")]
    assert audit.loc["manufacturer", "test"] == "Kruskal-Wallis H"
    assert audit.loc["manufacturer", "p"] == pytest.approx(stats.kruskal(*groups).pvalue, rel=1e-9)
    mw = stats.mannwhitneyu(s[(man["model"] == "Avanto").to_numpy()], s[(man["model"] == "Skyra").to_numpy()])
    assert audit.loc["model", "test"] == "Mann-Whitney U" and audit.loc["model", "p"] == pytest.approx(mw.pvalue)
    assert audit.loc["n_phases", "status"] == "constant" and np.isnan(audit.loc["n_phases", "p"])
    assert audit.loc["flip_angle", "status"] == "unavailable" and audit.loc["flip_angle", "n"] == 0
    assert "FlipAngle" in audit.loc["flip_angle", "note"]
    tested = audit["status"] == "tested"
    np.testing.assert_allclose(audit.loc[tested, "p_fdr"], _bh(audit.loc[tested, "p"].to_numpy()), rtol=1e-9)
    assert audit.loc["repetition_time", "p_fdr"] < 0.05  # the planted scanner dependence is found
    assert (tmp_path / "acquisition_audit.png").stat().st_size > 10_000


def test_subgroups_match_bootstrap_on_subset(tmp_path: Path, site) -> None:
    cache, ids, y, s = site
    run_analyses(tmp_path, ids, y, s, manifest=cache.manifest.loc[ids], clinical=cache.clinical, n_boot=300, seed=4)
    sub = pd.read_csv(tmp_path / "subgroups.csv", keep_default_na=False, na_values=[""])
    assert list(sub.columns[:7]) == ["subgroup", "level", "n", "n_pos", "auroc", "ci_low", "ci_high"]
    vendor = cache.manifest.loc[ids, "manufacturer"].to_numpy()
    for level in ("GE", "PHILIPS", "SIEMENS"):
        mask = vendor == level
        row = sub[(sub["subgroup"] == "vendor") & (sub["level"] == level)].iloc[0]
        ref = binary_report(y[mask], s[mask], 0.5, n_boot=300, seed=4)["auroc"]
        assert (row["n"], row["n_pos"]) == (mask.sum(), y[mask].sum())
        assert (row["auroc"], row["ci_low"], row["ci_high"]) == pytest.approx(
            (ref["value"], ref["ci_low"], ref["ci_high"]), abs=1e-12)
    post = sub[(sub["subgroup"] == "menopausal status") & (sub["level"] == "post")].iloc[0]
    assert post["n"] == 3 and post["n_pos"] == y[:3].sum() and np.isnan(post["auroc"]) and "too few" in post["status"]
    her2 = sub[sub["subgroup"] == "HER2 status"]
    assert len(her2) == 1 and her2.iloc[0]["status"].startswith("unavailable") and her2.iloc[0]["n"] == 0
    field = sub[sub["subgroup"] == "field strength"]["level"].tolist()
    assert field == ["1.5 T", "3 T"]
    md = (tmp_path / "subgroups_forest.png")
    assert md.stat().st_size > 10_000
    img = mpimg.imread(md)
    assert float(np.std(img[..., :3])) > 0.02


def test_write_evaluation_report_sections(tmp_path: Path, site) -> None:
    from common.evaluation import write_evaluation

    cache, ids, y, s = site
    res = write_evaluation(tmp_path, ids, y, s, 0.5, model_name="m", data_name="SITEA", n_boot=100,
                           manifest=cache.manifest.loc[ids], clinical=cache.clinical.reindex(ids))
    md = (tmp_path / "report.md").read_text()
    assert "## Acquisition-parameter audit" in md and "## Subgroup analysis" in md
    assert "| flip_angle | unavailable | 0 |" in md
    assert res["subgroups_unavailable"] == ["HER2 status"]
    assert {r["parameter"] for r in res["acquisition_audit"]} >= {"repetition_time", "manufacturer"}


def test_explain_cli_writes_maps(tmp_path: Path, site) -> None:
    from common.bundle import save_bundle
    from common.evaluate_cli import main
    from common.models import build_model, preset

    cache, ids, y, s = site
    torch.manual_seed(0)
    mc = preset("small")
    model = build_model(mc)
    tc = dataclasses.replace(TrainConfig(), device="cpu")
    save_bundle(tmp_path / "run", model, mc, {"config": cache.prep_config, "hash": cache.prep_hash}, tc, ["OTHER"],
                {}, 0.5)
    out = tmp_path / "rep"
    assert main(["--model", str(tmp_path / "run"), "--cache", str(cache.path), "--out", str(out), "--split", "all",
                 "--n-boot", "50", "--explain", "1", "--explain-patients", ids[0]]) == 0
    table = pd.read_csv(out / "explanations.csv", dtype={"patient_id": str})
    assert len(table) == 3 and ids[0] in set(table["patient_id"])
    for png in table["png"]:
        img = mpimg.imread(out / "explanations" / png)
        assert img.shape[0] > 400 and float(np.std(img[..., :3])) > 0.05
    assert "## Explanations" in (out / "report.md").read_text()
    # the maps themselves: shape of the cached volume, finite, and IG complete (sum = f(x) - f(baseline))
    item = PCRDataset(cache, [ids[0]])[0]
    exp = explain_one(model, item, ids[0])
    assert exp.gradcam.shape == (32, 32, 32) and exp.ig_image.shape == (3, 32, 32, 32)
    assert np.isfinite(exp.gradcam).all() and np.isfinite(exp.ig_image).all() and exp.gradcam.min() >= 0
    assert exp.gradcam.max() > 0 and list(exp.ig_clinical.index) == list(mc.clinical_features)
    with torch.no_grad():
        batch = {k: torch.as_tensor(item[k]).unsqueeze(0) for k in ("image", "clinical", "clinical_present")}
        full = model(batch)["logit"].item()
        base = model({**batch, "image": blurred(batch["image"], ExplainConfig().ig_baseline_sigma),
                      "clinical": torch.zeros_like(batch["clinical"])})["logit"].item()
    total = exp.ig_image.sum() + exp.ig_clinical.sum()
    # Captum's convergence delta is the completeness gap against an independent forward pass, and is small
    # (an untrained network's path is rough: a few hundredths of a logit here; see ExplainConfig.ig_steps)
    assert exp.ig_delta == pytest.approx(total - (full - base), abs=1e-4)
    assert abs(exp.ig_delta) < 0.02


def test_tumour_box_geometry_and_localisation() -> None:
    # 20 native 1-mm columns x 6 rows of 2 mm x 4 slices of 3 mm onto a 32^3 grid of 2 mm (centre 15.5):
    # extents 20, 12, 12 mm -> half 5, 3, 3 voxels -> voxels 11-20 and 13-18
    axial = centred_box((0, 3, 0, 5, 0, 19), (3.0, 2.0, 1.0), np.eye(3), (32, 32, 32), 2.0, "LPS")
    assert axial == (13, 18, 13, 18, 11, 20)
    # sagittal: columns along world y, rows along -z, slices along x -> the long side lands on the grid's y axis
    sagittal = np.stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], axis=1)
    assert centred_box((0, 3, 0, 5, 0, 19), (3.0, 2.0, 1.0), sagittal, (32, 32, 32), 2.0, "LPS") == (13, 18, 11, 20, 13, 18)
    cam = np.zeros((8, 8, 8))
    cam[2:4, 2:4, 2:4] = 1.0
    cam[7, 7, 7] = 0.5
    exp = Explanation("p", 0.5, cam, np.zeros((2, 8, 8, 8)), None, "layer")
    loc = localisation(exp, (2, 3, 2, 3, 2, 3))
    assert loc["gradcam_energy_in_box"] == pytest.approx(8 / 8.5) and loc["gradcam_pointing_hit"] == 1.0
    assert loc["box_volume_share"] == pytest.approx(8 / 512)
    assert np.isnan(loc["ig_energy_in_box"]) and np.isnan(loc["ig_pointing_hit"])  # an all-zero map is no miss


def test_heldout_subgroups_average_seeds(site) -> None:
    cache, ids, y, s = site
    attrs = subgroup_attributes(ids, cache.manifest, cache.clinical)
    attrs.index = [f"SITEA/{i}" for i in ids]
    preds = [{"experiment": "heldout-SITEA", "test_site": "SITEA", "method": "pooled", "seed": k,
              "ids": list(attrs.index), "y": y, "score": s + 0.01 * k} for k in (0, 1)]
    rows = heldout_subgroups(preds, attrs, n_boot=100)
    groups = subgroup_attributes(ids, cache.manifest, cache.clinical)
    per_seed = [subgroup_table(y, s + 0.01 * k, groups, n_boot=100, seed=k) for k in (0, 1)]
    got = rows[(rows["subgroup"] == "vendor") & (rows["level"] == "GE")].iloc[0]
    want = [t[(t["subgroup"] == "vendor") & (t["level"] == "GE")].iloc[0] for t in per_seed]
    assert got["auroc"] == pytest.approx(np.mean([w["auroc"] for w in want]))
    assert got["ci_low"] == pytest.approx(np.mean([w["ci_low"] for w in want])) and got["seeds"] == 2
    assert "site" not in set(rows["subgroup"])  # one level by construction at a held-out institution


def test_simulation_report_has_heldout_subgroups(tmp_path: Path, site) -> None:
    from simulation.report import ArmResult, write_report

    cache, ids, y, s = site
    arms = [ArmResult(arm_id=f"heldout-SITEA__{m}__s0", experiment="heldout-SITEA", method=m, seed=0,
                      train_sites=["B"], predictions={"SITEA": {"ids": [f"SITEA/{i}" for i in ids], "y": y.tolist(),
                                                                "score": (s if m == "pooled" else 1 - s).tolist()}})
            for m in ("pooled", "clinical-lr")]
    path = write_report(arms, tmp_path, title="t", config={"caches": {"SITEA": str(cache.path)}}, semi_synthetic=True)
    rows = pd.read_csv(tmp_path / "subgroups_heldout.csv", keep_default_na=False, na_values=[""])
    ge = rows[(rows["method"] == "pooled") & (rows["subgroup"] == "vendor") & (rows["level"] == "GE")].iloc[0]
    mask = cache.manifest.loc[ids, "manufacturer"].to_numpy() == "GE"
    assert ge["auroc"] == pytest.approx(binary_report(y[mask], s[mask], 0.5, n_boot=500, seed=0)["auroc"]["value"])
    md = path.read_text()
    assert "## Subgroups at the held-out institutions" in md and "| vendor | GE |" in md


@pytest.mark.slow
def test_embedded_cohort_box_and_explain_end_to_end(tmp_path: Path) -> None:
    """Real DICOM (axial DUKE, sagittal I-SPY1): the truth box in cache coordinates sits on the enhancing
    tumour, and ``fedpcr evaluate --explain --truth`` scores localisation for every explained patient."""
    from common.analysis.tumour_box import box_mask, boxes_from_truth
    from common.bundle import save_bundle
    from common.config import PrepConfig
    from common.evaluate_cli import main
    from common.models import build_model, preset
    from common.preprocess.pipeline import run_prepare
    from simulation.cohort import write_cohort

    cohort = write_cohort(tmp_path / "cohort", sites=["DUKE", "ISPY1_AAB"], patients_per_site=8, seed=1, workers=1,
                          progress=False)
    truth = cohort / "truth.csv"
    for site_dir in sorted(p for p in cohort.iterdir() if p.is_dir()):
        out = tmp_path / "cache" / site_dir.name
        run_prepare(site_dir / "dicom", next(site_dir.glob("clinical.*")), out, PrepConfig(),
                    boxes=site_dir / "Annotation_Boxes.xlsx", workers=1, progress=False)
        cache = load_cache(out)
        boxes = boxes_from_truth(truth, cache.ids, cache.prep_config)
        assert set(boxes) == set(cache.ids)
        for pid in cache.ids:
            vol = np.load(out / cache.manifest.loc[pid, "volume"]).astype(float)
            box = boxes[pid]
            inside = box_mask(vol.shape[1:], box)
            ring = box_mask(vol.shape[1:], tuple(max(v - 3, 0) if k % 2 == 0 else min(v + 3, 31)
                                                 for k, v in enumerate(box))) & ~inside
            sub = vol[cache.channels.index("sub1")]
            assert sub[inside].mean() > 2 * sub[ring].mean(), (site_dir.name, pid)  # measured 2.9-20x
    cache = load_cache(tmp_path / "cache" / "DUKE")
    torch.manual_seed(0)
    mc = preset("small")
    save_bundle(tmp_path / "run", build_model(mc), mc, {"config": cache.prep_config, "hash": cache.prep_hash},
                dataclasses.replace(TrainConfig(), device="cpu"), ["OTHER"], {}, 0.5)
    rep = tmp_path / "rep"
    assert main(["--model", str(tmp_path / "run"), "--cache", str(cache.path), "--out", str(rep), "--split", "all",
                 "--n-boot", "50", "--explain", "1", "--truth", str(truth)]) == 0
    table = pd.read_csv(rep / "explanations.csv")
    assert len(table) == 2 and table["box_volume_share"].between(0.001, 0.9).all()
    assert table["ig_energy_in_box"].between(0, 1).all()
    assert "### Attribution inside the known tumour box" in (rep / "report.md").read_text()
