"""End to end: ``simulation/run.py`` on a tiny embedded cohort (3 sites, 1 seed, 1-2 epochs/rounds).

Checks the report's structure and that the held-out institution never reaches any training set:
recorded train_sites, recorded patient lists, and the datasets / caches actually handed to training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITES = "DUKE,AAI,AAQ"
HELD = "DUKE"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """Run the harness in-process with training entry points wrapped to record what they were given."""
    import common.baselines as baselines
    import common.train as train
    import simulation.federated as federated
    from common.data import dataset_ids

    out = tmp_path_factory.mktemp("sim")
    seen: dict[str, list] = {"train": [], "baseline": [], "federated": []}
    mp = pytest.MonkeyPatch()
    orig_train, orig_fit, orig_fed = train.train_epochs, baselines.Baseline.fit, federated.run_federated

    def train_epochs(model, dataset, *a, **k):
        seen["train"].append(dataset_ids(dataset))
        return orig_train(model, dataset, *a, **k)

    def fit(self, parts):
        seen["baseline"].append([(str(c.path), list(ids)) for c, ids in parts])
        return orig_fit(self, parts)

    def run_fed(site_caches, *a, **k):
        seen["federated"].append({s: str(p) for s, p in site_caches.items()})
        return orig_fed(site_caches, *a, **k)

    mp.setattr(train, "train_epochs", train_epochs)
    mp.setattr(baselines.Baseline, "fit", fit)
    mp.setattr(federated, "run_federated", run_fed)
    from simulation import run

    argv = ["--out", str(out), "--experiment", "tiny", "--sites", SITES, "--patients-per-site", "14",
            "--heldout", HELD, "--arms", "local,pooled,clinical-lr,kinetic,fedavg"]
    try:
        assert run.main(argv) == 0
    finally:
        mp.undo()
    assert "FAILED" not in (out / "report.md").read_text()
    return out, seen


def test_report_structure(tiny_run) -> None:
    out, _ = tiny_run
    res = pd.read_csv(out / "results.csv")
    assert list(res.columns) == ["experiment", "method", "train_sites", "test_site", "metric", "value", "ci_low",
                                 "ci_high", "seed"]
    assert set(res.experiment) == {f"heldout-{HELD}"}
    methods = set(res.method)
    assert {"pooled", "clinical-lr", "kinetic", "fedavg"} <= methods
    assert any(m.startswith("local-") for m in methods)  # a site whose tiny val split has one class is skipped
    assert {"AAI", "AAQ", "pooled", HELD} <= set(res.test_site)
    auroc = res[res.metric == "auroc"]
    assert auroc["value"].dropna().between(0, 1).all()  # NaN only where a tiny test split has one class
    assert auroc.loc[auroc.test_site == HELD, "value"].notna().all()
    cs = json.loads((out / "cross_site.json").read_text())
    assert HELD in cs and all(isinstance(m, dict) for m in cs[HELD].values())
    md = (out / "report.md").read_text()
    for section in ("SEMI-SYNTHETIC", "## Held-out institutions", "## Table 1", "## DeLong", "## Configuration",
                    "## Library versions", "GroupNorm"):
        assert section in md, section
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert any(p.startswith("roc_") for p in pngs) and any(p.startswith("decision_") for p in pngs)
    assert any(p.startswith("calibration_") for p in pngs) and "federated_rounds.png" in pngs
    assert (out / "config.json").is_file() and (out / "versions.json").is_file()
    assert len(list((out / "arms").glob("*.json"))) == 5


def test_heldout_never_trains(tiny_run) -> None:
    out, seen = tiny_run
    manifest = next((out / "caches").rglob(f"{HELD}/manifest.csv"))
    held_ids = set(pd.read_csv(manifest, dtype={"patient_id": str}).patient_id)
    assert held_ids
    res = pd.read_csv(out / "results.csv")
    assert not res.train_sites.str.split(";").map(lambda s: HELD in s).any()
    for path in (out / "arms").glob("*.json"):
        for arm in json.loads(path.read_text())["arms"]:
            assert HELD not in arm["train_sites"]
            assert HELD not in arm["train_patients"]
            assert not ({p for ids in arm["train_patients"].values() for p in ids} & held_ids)
            for site, ids in arm["train_patients"].items():
                test_ids = set(i.split("/", 1)[1] for i in arm["predictions"][site]["ids"])
                assert not (set(ids) & test_ids), (arm["arm_id"], site)  # internal test split never trains
    # what training code actually received
    assert seen["train"] and seen["baseline"] and seen["federated"]
    for ids in seen["train"]:
        assert all(site != HELD for site, _ in ids)
    for parts in seen["baseline"]:
        assert all(Path(p).name != HELD for p, _ in parts)
    for caches in seen["federated"]:
        assert HELD not in caches and all(Path(p).name != HELD for p in caches.values())
    bundle = json.loads(next((out / "work").rglob("bundle.json")).read_text())
    assert HELD not in bundle["train_sites"]


def test_rerun_resumes_and_script_entry(tiny_run) -> None:
    """A second run recomputes nothing (arms cached) and works as a script from the repo root."""
    out, _ = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "arms").glob("*.json")}
    proc = subprocess.run([sys.executable, "simulation/run.py", "--out", str(out), "--experiment", "tiny", "--sites",
                           SITES, "--patients-per-site", "14", "--heldout", HELD, "--arms",
                           "local,pooled,clinical-lr,kinetic,fedavg"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].endswith("report.md")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "arms").glob("*.json")}
    assert after == before
