"""Everything a ClientApp sends during a federated run is recorded (the audit mod wraps the ClientApp's
returned Messages) and inspected: only model arrays and aggregate numbers leave a site - no patient ID,
no DICOM tag value, no per-patient score."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cache_factory import make_cache
from common.audit_chain import read_entries
from common.config import TrainConfig
from common.data import load_cache
from common.metrics_counts import THRESHOLD_GRID
from common.models import build_model
from common.models.config import preset
from client.task import load_site
from simulation.federated import run_federated

MODEL = preset("small", width=4, image_features=8, clinical_hidden=8, fusion_hidden=8)
TRAIN = TrainConfig(batch_size=8, augment=False, val_fraction=0.3, test_fraction=0.2)
ALLOWED_METRICS = {"num-examples", "train-loss", "n-pos", "n-neg", "loss", "tp", "fp", "tn", "fn",
                   "test-num-examples", "test-n-pos", "test-n-neg", "test-tp", "test-fp", "test-tn", "test-fn",
                   "withheld", "test-withheld", "epsilon", "delta", "site-auroc"}  # issue 12 (docs/privacy.md)


def _plant_dicom_tags(cache: Path, site: str) -> list[str]:
    """Add fake DICOM tag values to the site's manifest and clinical table (as a careless pipeline might)."""
    man = pd.read_csv(cache / "manifest.csv", dtype={"patient_id": str})
    secrets = []
    for col, fmt in (("patient_name", "DOE^JANE{i:03d}{s}"), ("institution_name", "ST MARY CLINIC {s}"),
                     ("accession_number", "ACC{i:06d}{s}")):
        man[col] = [fmt.format(i=i, s=site) for i in range(len(man))]
        secrets += list(man[col])
    man.to_csv(cache / "manifest.csv", index=False)
    clin = pd.read_csv(cache / "clinical.csv", dtype={"patient_id": str})
    clin["patient_name"] = man["patient_name"]
    clin.to_csv(cache / "clinical.csv", index=False)
    return secrets


def test_replies_carry_only_arrays_and_aggregates(tmp_path: Path) -> None:
    sites = {s: make_cache(tmp_path / "data", s, n=24, seed=i, id_prefix=f"PT-{s}-") for i, s in enumerate(("P1", "P2", "P3"))}
    secrets: list[str] = []
    for name, path in sites.items():
        secrets += _plant_dicom_tags(path, name)
        secrets += load_cache(path).ids  # patient IDs
    audit = tmp_path / "audit"
    run_federated(sites, tmp_path / "run", strategy="fedavg", num_rounds=2, model_cfg=MODEL, train_cfg=TRAIN,
                  local_epochs=1, seed=0, extra_config={"eval-split": "test"}, audit_dir=audit)

    raw = "".join(f.read_text() for f in sorted(audit.glob("audit-*.jsonl")))  # instructions + replies
    rows = read_entries(audit, "reply")  # verifies every hash chain
    assert {r["message_type"] for r in rows} == {"train", "evaluate"}
    assert len(rows) == 3 * (1 + 2 + 2)  # round-0 evaluate + 2 x (train + evaluate) per site
    leaked = [s for s in secrets if s in raw]
    assert not leaked, f"identifying strings left the site: {leaked[:5]}"

    state = build_model(MODEL).state_dict()
    splits = {name: load_site(str(p), TRAIN.seed, TRAIN.val_fraction, TRAIN.test_fraction).splits
              for name, p in sites.items()}
    for r in rows:
        assert r["error"] is None
        assert set(r["configs"]) == {"site"} and set(r["configs"]["site"]) == {"name"}
        site = r["configs"]["site"]["name"]
        assert site in sites
        metrics = r["metrics"]["metrics"]
        assert set(r["metrics"]) == {"metrics"} and set(metrics) <= ALLOWED_METRICS
        for key, value in metrics.items():
            if isinstance(value, list):  # only count lists on the shared grid, never per-patient values
                assert key.split("-")[-1] in ("tp", "fp", "tn", "fn")
                assert len(value) == len(THRESHOLD_GRID) and all(isinstance(v, int) for v in value)
            else:
                assert isinstance(value, (int, float))
        if r["message_type"] == "train":
            assert set(r["arrays"]) == {"arrays"}
            arrays = r["arrays"]["arrays"]
            assert sorted(arrays) == sorted(state)  # exactly the model's tensors (the audit log sorts keys)
            assert all(a["shape"] == list(state[k].shape) for k, a in arrays.items())
            assert metrics["num-examples"] == len(splits[site]["train"])
        else:
            assert r["arrays"] == {}
            assert metrics["num-examples"] == len(splits[site]["val"])
            assert metrics["test-num-examples"] == len(splits[site]["test"])
            assert metrics["tp"][0] + metrics["fn"][0] == metrics["n-pos"]  # counts are aggregates of the split
