"""Arms of an image experiment: train one method on a fold's training sites and score every test set.

FLamby protocol: every arm gets the same total compute (local-only and pooled train ``epochs`` epochs;
federated arms run ``rounds`` x ``local_epochs`` with rounds * local_epochs = epochs). Heavy imports (torch,
Flower) happen inside functions; ``simulation.federated.run_federated`` and ``common.train`` are looked up at
call time (tests wrap them to audit what training received).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.config import TrainConfig
from simulation.arm_result import ArmResult, evaluate_predictions, metric_rows
from simulation.experiment_config import ALL_ARMS, FEDERATED_ARMS, VISIT_ARMS, ExperimentConfig
from simulation.folds import Fold, SiteData, test_sets


def run_arm(cfg: ExperimentConfig, sites: dict[str, SiteData], fold: Fold, arm_name: str, seed: int,
            work: Path) -> list[ArmResult]:
    """Train and evaluate one arm on one fold and seed (``local`` returns one arm per training site)."""
    t0 = time.perf_counter()
    out: list[ArmResult] = []

    def new(method: str, train_sites: list[str]) -> ArmResult:
        arm = ArmResult(arm_id=f"{fold.name}__{method}__s{seed}", experiment=fold.name, method=method, seed=seed,
                        train_sites=sorted(train_sites))
        _record_training(arm, fold, sites, train_sites)
        return arm

    if arm_name == "local":
        for s in fold.train:
            sp = sites[s].splits[seed]
            one_class = [part for part in ("train", "val")
                         if len({sites[s].labels[p] for p in sp[part]}) < 2]
            if one_class:
                print(f"local-{s}: {'/'.join(one_class)} split holds one class only; no local model "
                      f"(group small sites with --min-site-size)", file=sys.stderr)
                continue
            arm = new(f"local-{s}", [s])
            model, mcfg, arm.threshold, arm.history = _train_network(cfg, sites, [s], seed, "fusion")
            arm.history = []  # local training curves are not federated rounds
            _evaluate_arm(arm, fold, sites, _network_scorer(model, mcfg, cfg.train, sites), cfg)
            out.append(arm)
    elif arm_name in ("pooled", "image-only", "clinical-only", *VISIT_ARMS):
        arm = new(arm_name, fold.train)
        kind = "fusion" if arm_name == "pooled" else arm_name
        model, mcfg, arm.threshold, _ = _train_network(cfg, sites, fold.train, seed, kind)
        arm.notes.append(f"{arm_name}: centralised training on the pooled training splits of the training sites, "
                         f"{cfg.epochs} epochs, early stopping + threshold on their pooled validation splits; "
                         f"visits {'+'.join(mcfg.visits)}")
        _evaluate_arm(arm, fold, sites, _network_scorer(model, mcfg, cfg.train, sites), cfg)
        out.append(arm)
    elif arm_name in ("clinical-lr", "kinetic"):
        arm = new(arm_name, fold.train)
        score, arm.threshold, note = _tabular_arm(cfg, sites, fold.train, seed, arm_name)
        arm.notes.append(note)
        _evaluate_arm(arm, fold, sites, score, cfg)
        out.append(arm)
    elif arm_name in FEDERATED_ARMS:
        out.append(_federated_arm(cfg, sites, fold, arm_name, seed, work, new))
    else:
        raise ValueError(f"unknown arm {arm_name!r}; known: {ALL_ARMS + VISIT_ARMS}")
    dt = (time.perf_counter() - t0) / max(1, len(out))
    for arm in out:
        arm.seconds = dt
    return out


def _federated_arm(cfg: ExperimentConfig, sites: dict[str, SiteData], fold: Fold, strategy: str, seed: int,
                   work: Path, new: Callable[[str, list[str]], ArmResult]) -> ArmResult:
    """Run the real ServerApp + ClientApp in Flower's simulation engine (``simulation.federated.run_federated``)."""
    from common.bundle import load_bundle
    from simulation.federated import run_federated

    arm = new(strategy, fold.train)
    train_cfg = replace(cfg.train, seed=seed, epochs=cfg.local_epochs,
                        prox_mu=cfg.prox_mu if strategy == "fedprox" else 0.0)
    model_cfg = _model_cfg(cfg, "fusion")
    result = run_federated({s: sites[s].cache for s in fold.train}, work / f"{fold.name}__{strategy}__s{seed}",
                           strategy=strategy, num_rounds=cfg.rounds, model_cfg=model_cfg, train_cfg=train_cfg,
                           local_epochs=cfg.local_epochs, seed=seed)
    bundle = load_bundle(result.bundle_dir)
    model = bundle.model
    arm.threshold = float(bundle.threshold)
    arm.history = [dict(h) for h in (result.history or [])]
    arm.notes.append(f"{strategy}: Flower ServerApp + ClientApp in the Ray simulation engine, one SuperNode per "
                     f"training site, {cfg.rounds} rounds x {cfg.local_epochs} local epochs (= {cfg.epochs} epochs)")
    if strategy == "fedbn":
        arm.notes.append("fedbn on a held-out institution: evaluated with the server's averaged (global) norm "
                         "parameters; on training sites' tests too (their local norm layers stay on the sites)")
    _evaluate_arm(arm, fold, sites, _network_scorer(model, model_cfg, cfg.train, sites), cfg)
    return arm


def _evaluate_arm(arm: ArmResult, fold: Fold, sites: dict[str, SiteData],
                  score: Callable[[str, list[str]], np.ndarray], cfg: ExperimentConfig) -> None:
    """Score every test set with ``score(site, ids)`` and add rows + predictions to ``arm``."""
    cache: dict[str, dict[str, float]] = {}
    for ts in test_sets(fold, sites, arm.seed):
        ids, ys, ss = [], [], []
        for site, pids in ts.parts:
            if site not in cache:
                cache[site] = {}
            missing = [p for p in pids if p not in cache[site]]
            if missing:
                cache[site].update(zip(missing, np.asarray(score(site, missing), dtype=float)))
            ids += [f"{site}/{p}" for p in pids]
            ys += [sites[site].labels[p] for p in pids]
            ss += [cache[site][p] for p in pids]
        y, s = np.asarray(ys, dtype=float), np.asarray(ss, dtype=float)
        if not len(y):
            continue  # a site too small to have a test split
        arm.predictions[ts.name] = {"ids": ids, "y": y.tolist(), "score": s.tolist()}
        rep = evaluate_predictions(y, s, float(arm.threshold if arm.threshold is not None else 0.5),
                                   n_boot=cfg.n_boot, seed=arm.seed)
        arm.rows += metric_rows(arm.experiment, arm.method, arm.train_sites, ts.name, arm.seed, rep, n=len(y),
                                n_pos=int(y.sum()))


def _record_training(arm: ArmResult, fold: Fold, sites: dict[str, SiteData], train_sites: list[str]) -> None:
    """Record exactly which patients trained / validated (the leakage audit reads this)."""
    for s in train_sites:
        sp = sites[s].splits[arm.seed]
        arm.train_patients[s] = list(sp["train"]) + list(sp["val"])
    leaked = set(train_sites) & set(fold.heldout)
    if leaked:
        raise AssertionError(f"held-out site(s) {sorted(leaked)} in training set of {arm.arm_id}")


def _model_cfg(cfg: ExperimentConfig, kind: str) -> Any:
    """The model preset for an arm kind (``fusion``, ``image-only``, ``clinical-only``, ``pooled-early`` = fusion
    reading the baseline and the early-treatment visit)."""
    from common.models.config import preset as model_preset

    overrides: dict[str, Any] = {"in_channels": len(cfg.prep.channels)}
    if kind == "pooled-early":
        overrides.update(visits=("pre", "early"))
    elif kind == "image-only":
        overrides.update(use_clinical=False, modality_dropout=0.0)
    elif kind == "clinical-only":
        overrides.update(use_image=False, aux_receptor_head=False, modality_dropout=0.0)
    return model_preset(cfg.model_preset, **overrides)


def _datasets(sites: dict[str, SiteData], names: list[str], seed: int, part: str, augment: bool,
              visits: tuple[str, ...] = ("pre",)) -> Any:
    """One pooled dataset of the ``part`` split (train/val/test) of sites ``names``, serving ``visits``."""
    from common.data import PCRDataset, pool_datasets

    return pool_datasets([PCRDataset(sites[s].loaded, sites[s].splits[seed][part], augment=augment, seed=seed,
                                     visits=visits) for s in names])


def _network_scorer(model: Any, model_cfg: Any, train_cfg: TrainConfig,
                    sites: dict[str, SiteData]) -> Callable[[str, list[str]], np.ndarray]:
    """``score(site, ids)`` -> pCR probabilities of a trained network."""
    from common.data import PCRDataset
    from common.train import predict

    def score(site: str, ids: list[str]) -> np.ndarray:
        _, s = predict(model, PCRDataset(sites[site].loaded, ids, augment=False, visits=model_cfg.visits), train_cfg)
        return np.asarray(s, dtype=float)

    return score


def _train_network(cfg: ExperimentConfig, sites: dict[str, SiteData], names: list[str], seed: int,
                   kind: str) -> tuple[Any, Any, float, list[dict[str, Any]]]:
    """Centralised training on ``names``' train splits, early stopping + threshold on their val splits."""
    import torch

    from common.models import build_model
    from common.train import fit

    torch.manual_seed(seed)
    model_cfg = _model_cfg(cfg, kind)
    train_cfg = replace(cfg.train, seed=seed, epochs=cfg.epochs)
    model = build_model(model_cfg)
    res = fit(model, _datasets(sites, names, seed, "train", train_cfg.augment, model_cfg.visits),
              _datasets(sites, names, seed, "val", False, model_cfg.visits), train_cfg, log=None)
    model.load_state_dict(res.best_state)
    history = [dict(h) for h in (res.history or [])]
    return model, model_cfg, float(res.threshold), history


def _tabular_arm(cfg: ExperimentConfig, sites: dict[str, SiteData], names: list[str], seed: int,
                 kind: str) -> tuple[Callable[[str, list[str]], np.ndarray], float, str]:
    """Clinical logistic regression or Braman kinetic model (``common.baselines``), fit on training sites only;
    threshold from the training sites' pooled validation splits."""
    from common.baselines import make_baseline
    from common.metrics import choose_threshold

    model = make_baseline("clinical_logistic" if kind == "clinical-lr" else "kinetic_logistic")
    model.fit([(sites[s].loaded, sites[s].splits[seed]["train"]) for s in names])
    yv = np.concatenate([[sites[s].labels[p] for p in sites[s].splits[seed]["val"]] for s in names]).astype(float)
    sv = np.concatenate([model.predict(sites[s].loaded, sites[s].splits[seed]["val"]) for s in names])
    threshold = float(choose_threshold(yv, sv))
    note = ("clinical-lr: common.baselines.ClinicalLogistic (logistic regression on the fixed clinical encoding + "
            "missing indicators)" if kind == "clinical-lr" else
            "kinetic: common.baselines.KineticLogistic (Braman semi-quantitative kinetic features; imputation and "
            "scaling fit on training patients only)")
    return (lambda site, ids: model.predict(sites[site].loaded, ids)), threshold, note
