"""End to end on real DICOM: synth -> prepare -> train the ``small`` fusion model with the default
TrainConfig -> out-of-fold predictions, against the clinical-only logistic baseline on the same folds.

This is issue 4's acceptance check: the image + clinical model must learn the planted image signal,
i.e. beat what the (real) clinical variables alone give. Five-fold cross-validation over the pooled
default sites (80 patients asked per site) keeps every patient's prediction out of its own training
data and gives ~220 out-of-fold predictions, so the comparison is not decided by a 30-patient split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from common.baselines import ClinicalLogistic
from common.config import PrepConfig, TrainConfig
from common.data import PCRDataset, load_cache, pool_datasets, split_patients
from common.delong import delong_test
from common.models import build_model, preset
from common.preprocess.pipeline import run_prepare
from common.train import fit, predict
from simulation.cohort import write_cohort

N_FOLDS = 5
#: Patients per site asked of the generator (sites with fewer real MAMA-MIA anchors give all they have:
#: DUKE 80, AAI 80, AAQ 33, ISPY1_AAB 27 = 220). At the default ~40 per site (152 patients, ~100
#: training patients per fold) the CNN's gain over the clinical baseline is within fold-to-fold noise
#: (measured: out-of-fold AUROC 0.70-0.82 across training settings vs clinical 0.74); at 220 it is not.
PATIENTS_PER_SITE = 80


@pytest.fixture(scope="module")
def prepared_cohort(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The embedded cohort's default sites at default signal (real DICOM), prepared with the default PrepConfig."""
    root = tmp_path_factory.mktemp("planted")
    cohort = write_cohort(root / "cohort", patients_per_site=PATIENTS_PER_SITE, seed=0, workers=2, progress=False)
    caches = []
    for site_dir in sorted(p for p in cohort.iterdir() if p.is_dir()):
        clinical = next(site_dir.glob("clinical.*"))
        out = root / "cache" / site_dir.name
        result = run_prepare(site_dir / "dicom", clinical, out, PrepConfig(), boxes=site_dir / "Annotation_Boxes.xlsx",
                             workers=2, progress=False)
        assert not result.skipped, result.skipped
        caches.append(load_cache(out))
    return caches


def _cross_validated_scores(caches: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold (labels, fusion scores, clinical-LR scores) over every labelled patient."""
    keys = [(k, pid) for k, c in enumerate(caches) for pid in c.manifest.index if not np.isnan(c.labels([pid])[0])]
    position = {key: i for i, key in enumerate(keys)}
    labels = np.array([caches[k].labels([pid])[0] for k, pid in keys])
    strata = [f"{k}:{int(y)}" for (k, _), y in zip(keys, labels)]  # stratified by site and label
    fusion = np.full(len(keys), np.nan)
    clinical = np.full(len(keys), np.nan)
    folds = StratifiedKFold(N_FOLDS, shuffle=True, random_state=0).split(np.zeros(len(keys)), strata)
    for fold, (train_idx, test_idx) in enumerate(folds):
        cfg = dataclasses.replace(TrainConfig(), seed=fold, device="cpu")
        train_parts, val_parts, test_parts, lr_parts = [], [], [], []
        for k, cache in enumerate(caches):
            tr = [keys[i][1] for i in train_idx if keys[i][0] == k]
            te = [keys[i][1] for i in test_idx if keys[i][0] == k]
            split = split_patients(tr, cache.labels(tr), fold, cfg.val_fraction, 0.0)  # inner validation
            train_parts.append(PCRDataset(cache, split["train"], augment=cfg.augment))
            val_parts.append(PCRDataset(cache, split["val"]))
            test_parts.append((k, cache, te))
            lr_parts.append((cache, tr))
        torch.manual_seed(fold)
        model = build_model(preset("small"))
        fit(model, pool_datasets(train_parts), pool_datasets(val_parts), cfg, log=None)
        baseline = ClinicalLogistic().fit(lr_parts)
        for k, cache, te in test_parts:
            where = [position[(k, pid)] for pid in te]
            _, scores = predict(model, PCRDataset(cache, te), cfg)
            fusion[where] = scores
            clinical[where] = baseline.predict(cache, te)
    assert not np.isnan(fusion).any() and not np.isnan(clinical).any()
    return labels, fusion, clinical


@pytest.mark.slow  # ~7 min on 2 cores: the issue-4 acceptance check, run with `pytest -m slow`
@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")  # site x pCR strata of 4 in ISPY1_AAB
def test_fusion_learns_planted_signal_beyond_clinical_baseline(prepared_cohort):
    labels, fusion, clinical = _cross_validated_scores(prepared_cohort)
    auc_fusion = roc_auc_score(labels, fusion)
    auc_clinical = roc_auc_score(labels, clinical)
    test = delong_test(labels, fusion, clinical)
    print(f"\nout-of-fold AUROC over {len(labels)} patients ({int(labels.sum())} pCR): fusion {auc_fusion:.3f}, "
          f"clinical LR {auc_clinical:.3f}, DeLong p={test['p']:.4f}")
    assert auc_fusion >= 0.75
    assert auc_fusion - auc_clinical >= 0.05
    assert test["p"] < 0.05
