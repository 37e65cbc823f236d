"""The REAL clinical-only experiment: local, pooled and federated logistic models on the public MAMA-MIA
table (I-SPY1, I-SPY2, Duke, NACT; sites = clinical-trial site codes), with held-out institutions.

No images are needed. Federated logistic regression is FedAvg / FedProx run in-process: every site takes
``local_epochs`` passes of mini-batch SGD from the global weights, and the server combines the replies with
Flower's own ``aggregate_arrayrecords`` (the weighted mean FedAvg uses, weights = training patients).
It is not run through Ray: the message flow is simulated, the arithmetic is Flower's.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from common.config import TrainConfig, to_dict
from common.paths import MAMA_MIA_TABLE
from common.schema import encode_clinical
from simulation.partition import assign_from_table, make_partition
from simulation.report import POOLED, ArmResult, evaluate_predictions, metric_rows

#: Anchors printed beside our numbers (AUROC of clinical-only models on Duke; docs ANCHORS.md / SEEDS.md).
ANCHORS = {"MRP 2024 clinical-only, external Duke": 0.68, "MRP 2024 clinical-only, external I-SPY2": 0.68,
           "ANCHORS independent LR, train other collections, test Duke": 0.67}


@dataclass(frozen=True)
class ClinicalExperimentConfig:
    """Settings of the clinical-only experiment (defaults = the documented run)."""

    table: str = str(MAMA_MIA_TABLE)
    #: ``site`` (MAMA-MIA trial-site code) or ``collection``.
    partition: str = "site"
    #: Sites with fewer labelled patients are grouped into one ``SMALL`` client.
    min_site_size: int = 40
    #: Institutions left out one at a time (leave-one-institution-out over this list); ``None`` = every site
    #: of the table with >= ``min_site_size`` labelled patients (:func:`heldout_sites`).
    heldout: tuple[str, ...] | None = None
    #: Whole collections left out (MRP design: train elsewhere, test on I-SPY2). I-SPY1 shares trial sites
    #: with I-SPY2, so this split is collection-disjoint, not institution-disjoint.
    heldout_collections: tuple[str, ...] = ("ISPY2",)
    seeds: tuple[int, ...] = (0, 1)
    #: Federated logistic regression: rounds x local epochs of mini-batch SGD.
    rounds: int = 30
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    #: L2 penalty on the mean loss (sklearn's C=1 on ~1000 training patients is the same strength).
    l2: float = 1e-3
    prox_mu: float = 0.1
    n_boot: int = 2000
    #: Bootstrap resamples for the off-diagonal cross-site cells (local models on other sites' tests).
    n_boot_cross: int = 2000
    #: ``fednewton-lr``: federated Newton on the pooled objective (simulation/federated_glm.py), the converged
    #: reference that separates FedAvg's optimisation error from the cost of federating.
    methods: tuple[str, ...] = ("clinical-lr", "local", "fedavg-lr", "fedprox-lr", "fednewton-lr")
    val_fraction: float = TrainConfig.val_fraction
    test_fraction: float = TrainConfig.test_fraction


# ---------------------------------------------------------------- data


@dataclass
class ClinicalData:
    """Labelled canonical rows with encoded features, site and collection per patient."""

    table: pd.DataFrame
    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    site: np.ndarray
    collection: np.ndarray
    issues: list[dict[str, Any]] = field(default_factory=list)


def load_mama_mia(path: str | Path = MAMA_MIA_TABLE) -> ClinicalData:
    """Read the MAMA-MIA table through the project's clinical adapter; keep patients with a 0/1 pCR label."""
    from common.preprocess.clinical import load_clinical

    loaded = load_clinical(Path(path), fmt="mama-mia")
    table = loaded.table.copy()
    issues = list(getattr(loaded, "issues", []) or [])
    table["patient_id"] = table["patient_id"].astype(str)
    table["collection"] = _collections(table, Path(path))
    pcr = pd.to_numeric(table["pcr"], errors="coerce")
    keep = pcr.isin([0, 1]) & table["site"].notna()
    dropped = int((~keep).sum())
    if dropped:
        issues.append({"patient": "*", "field": "pcr/site", "value": dropped,
                       "reason": f"{dropped} rows without a 0/1 pCR label or a site left out"})
    table = table[keep].reset_index(drop=True)
    values, present = encode_clinical(table)
    X = np.hstack([values, present]).astype(np.float64)
    return ClinicalData(table=table, X=X, y=pcr[keep].to_numpy(dtype=float),
                        ids=table["patient_id"].to_numpy(dtype=str), site=table["site"].astype(str).to_numpy(),
                        collection=table["collection"].astype(str).to_numpy(), issues=issues)


def _collections(table: pd.DataFrame, path: Path) -> pd.Series:
    """The TCIA collection of every row, from the ID's spelling (``common.preprocess.clinical.collection_of``)."""
    from common.preprocess.clinical import collection_of

    return table["patient_id"].map(collection_of).fillna("unknown").astype(str)


def split_ids(ids: np.ndarray, y: np.ndarray, seed: int, val_fraction: float,
              test_fraction: float) -> dict[str, np.ndarray]:
    """Stratified train/val/test split of one site's patients (``common.data.split_patients`` when present)."""
    try:
        from common.data import split_patients
    except ImportError:  # common/data.py not landed yet: same rule, scikit-learn
        split_patients = None
    if split_patients is not None:
        parts = split_patients(list(ids), list(y.astype(int)), seed, val_fraction, test_fraction)
        return {k: np.asarray(list(v), dtype=str) for k, v in parts.items()}
    from sklearn.model_selection import train_test_split

    strat = y if min(np.bincount(y.astype(int), minlength=2)) >= 3 else None
    rest, test = train_test_split(ids, test_size=test_fraction, random_state=seed, stratify=strat)
    ry = y[np.isin(ids, rest)]
    strat = ry if min(np.bincount(ry.astype(int), minlength=2)) >= 3 else None
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                  stratify=strat)
    return {"train": np.asarray(train, dtype=str), "val": np.asarray(val, dtype=str),
            "test": np.asarray(test, dtype=str)}


# ---------------------------------------------------------------- models


def fit_sklearn_lr(X: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Centralised logistic regression: the project's clinical baseline pipeline (``common.baselines``)
    fit on the encoded features; returns a scoring function."""
    from common.baselines import ClinicalLogistic

    if len(np.unique(y)) < 2:
        raise ValueError("training data hold one class only")
    model = ClinicalLogistic().make_pipeline().fit(X, y.astype(int))
    return lambda Z: model.predict_proba(Z)[:, 1]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _local_sgd(w: np.ndarray, X: np.ndarray, y: np.ndarray, cfg: ClinicalExperimentConfig, mu: float,
               rng: np.random.Generator) -> np.ndarray:
    """``local_epochs`` passes of mini-batch SGD on mean logistic loss + l2/2 |w|^2 (+ mu/2 |w - w_global|^2)."""
    w_global = w.copy()
    w = w.copy()
    Xb = np.hstack([X, np.ones((len(X), 1))])
    for _ in range(cfg.local_epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            p = _sigmoid(Xb[idx] @ w)
            grad = Xb[idx].T @ (p - y[idx]) / len(idx)
            reg = cfg.l2 * w
            reg[-1] = 0.0  # no penalty on the intercept
            grad += reg + mu * (w - w_global)
            w -= cfg.lr * grad
    return w


def fit_federated_lr(site_data: dict[str, tuple[np.ndarray, np.ndarray]], cfg: ClinicalExperimentConfig,
                     seed: int, mu: float = 0.0, val_data: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """FedAvg (mu=0) / FedProx logistic regression; aggregation by Flower's ``aggregate_arrayrecords``.

    History rows hold the pooled validation AUROC computed from per-site threshold counts summed at the
    server (declearn style), so no per-patient score leaves a site.
    """
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from common.metrics import auroc_error_bound_from_counts, auroc_from_counts, threshold_counts
    from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
    from simulation.flower_compat import aggregate_arrayrecords

    rng = np.random.default_rng(seed)
    dim = next(iter(site_data.values()))[0].shape[1] + 1
    w = np.zeros(dim)
    history: list[dict[str, Any]] = []
    for rnd in range(1, cfg.rounds + 1):
        replies = []
        for site, (X, y) in site_data.items():
            w_local = _local_sgd(w, X, y, cfg, mu, rng)
            replies.append(RecordDict({ARRAYS: ArrayRecord({"w": Array(w_local)}),
                                       METRICS: MetricRecord({NUM_EXAMPLES: int(len(y))})}))
        w = aggregate_arrayrecords(replies, NUM_EXAMPLES)["w"].numpy().astype(np.float64)
        if val_data:
            counts = sum(threshold_counts(yv, _score(w, Xv)) for Xv, yv in val_data.values())
            history.append({"round": rnd, "val_auroc": float(auroc_from_counts(counts)),
                            "val_auroc_bound": float(auroc_error_bound_from_counts(counts))})
    return w, history


def _score(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    return _sigmoid(X @ w[:-1] + w[-1])


# ---------------------------------------------------------------- experiment


@dataclass
class Fold:
    """One experiment: which sites train (with their splits) and which patients form the held-out test."""

    name: str
    train_sites: dict[str, dict[str, np.ndarray]]  # site -> {"train","val","test"} index arrays into data
    heldout_name: str | None
    heldout_idx: np.ndarray | None
    groups: dict[str, list[str]]


def heldout_sites(data: ClinicalData, min_size: int) -> tuple[str, ...]:
    """Sites of the table with >= ``min_size`` labelled patients, largest first (ties by name)."""
    sizes = pd.Series(data.site).value_counts()
    keep = sizes[sizes >= min_size]
    return tuple(sorted(keep.index.astype(str), key=lambda s: (-int(keep[s]), s)))


def build_folds(data: ClinicalData, cfg: ClinicalExperimentConfig, seed: int) -> list[Fold]:
    """The internal fold (every site trains) plus one fold per held-out institution / collection."""
    id_pos = {pid: k for k, pid in enumerate(data.ids)}
    by = "collection" if cfg.partition == "collection" else "site"
    frame = pd.DataFrame({"patient_id": data.ids, "site": data.site, "dataset": data.collection})

    def splits(mask: np.ndarray, keep: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
        part = make_partition(assign_from_table(frame[mask], by=by), key=by, min_site_size=cfg.min_site_size,
                              keep=keep)
        out = {}
        for site, pids in part.sites.items():
            idx = np.array([id_pos[p] for p in pids])
            parts = split_ids(data.ids[idx], data.y[idx], seed, cfg.val_fraction, cfg.test_fraction)
            out[site] = {k: np.array([id_pos[p] for p in v], dtype=int) for k, v in parts.items()}
        return out, part.groups

    all_mask = np.ones(len(data.ids), dtype=bool)
    train, groups = splits(all_mask)
    folds = [Fold("internal", train, None, None, groups)]
    heldout = cfg.heldout if cfg.heldout is not None else heldout_sites(data, cfg.min_site_size)
    for site in heldout:
        held = (data.site == site) if by == "site" else (data.collection == site)
        if not held.any():
            print(f"clinical experiment: held-out site {site!r} not in the table, skipped", file=sys.stderr)
            continue
        train, groups = splits(~held)
        folds.append(Fold(f"heldout-{site}", train, site, np.flatnonzero(held), groups))
    for coll in cfg.heldout_collections:
        held = data.collection == coll
        if not held.any():
            print(f"clinical experiment: held-out collection {coll!r} not in the table, skipped", file=sys.stderr)
            continue
        train, groups = splits(~held)
        folds.append(Fold(f"mrp-heldout-{coll}", train, coll, np.flatnonzero(held), groups))
    return folds


def _evaluate(arm: ArmResult, data: ClinicalData, fold: Fold, score: Callable[[np.ndarray], np.ndarray],
              threshold: float, cfg: ClinicalExperimentConfig, own_site: str | None = None) -> None:
    """Add rows + predictions for every training site's internal test, the pooled test and the held-out site."""
    tests: dict[str, np.ndarray] = {s: sp["test"] for s, sp in fold.train_sites.items()}
    tests[POOLED] = np.concatenate(list(tests.values()))
    if fold.heldout_idx is not None:
        tests[fold.heldout_name] = fold.heldout_idx  # type: ignore[index]
    for site, idx in tests.items():
        y, s = data.y[idx], score(data.X[idx])
        arm.predictions[site] = {"ids": data.ids[idx].tolist(), "y": y.tolist(), "score": s.tolist()}
        full = own_site is None or site in (own_site, POOLED, fold.heldout_name)
        rep = evaluate_predictions(y, s, threshold, n_boot=cfg.n_boot if full else cfg.n_boot_cross, seed=arm.seed)
        arm.rows += metric_rows(arm.experiment, arm.method, arm.train_sites, site, arm.seed, rep, n=len(y),
                                n_pos=int(y.sum()))


def _threshold(y: np.ndarray, s: np.ndarray) -> float:
    from common.metrics import choose_threshold

    return float(choose_threshold(y, s))


def _fednewton_arm(data: ClinicalData, fold: Fold, sites: list[str], tr: dict[str, np.ndarray],
                   va: dict[str, np.ndarray], arm: ArmResult, cfg: ClinicalExperimentConfig) -> ArmResult:
    """Federated Newton logistic regression (same objective as clinical-lr: C=1), Youden threshold on
    validation counts summed over sites."""
    from common.metrics import threshold_counts, youden_from_counts
    from simulation.federated_glm import fit_federated_newton

    w, arm.history = fit_federated_newton({s: (data.X[tr[s]], data.y[tr[s]]) for s in sites})
    arm.threshold = youden_from_counts(sum(threshold_counts(data.y[va[s]], _score(w, data.X[va[s]])) for s in sites))
    arm.notes.append(f"fednewton-lr: federated Newton-Raphson on the pooled clinical-lr objective (C=1), "
                     f"{len(arm.history)} rounds of summed per-site gradients + Hessians; simulation-only reference")
    _evaluate(arm, data, fold, lambda Z: _score(w, Z), arm.threshold, cfg)
    return arm


def run_fold_method(data: ClinicalData, fold: Fold, method: str, seed: int,
                    cfg: ClinicalExperimentConfig) -> list[ArmResult]:
    """Train one method on ``fold`` and evaluate it (``local`` gives one arm per training site)."""
    t0 = time.perf_counter()
    sites = sorted(fold.train_sites)
    tr = {s: fold.train_sites[s]["train"] for s in sites}
    va = {s: fold.train_sites[s]["val"] for s in sites}
    arms: list[ArmResult] = []

    def new_arm(name: str, train_sites: list[str]) -> ArmResult:
        arm = ArmResult(arm_id=f"clinical__{fold.name}__{name}__s{seed}", experiment=fold.name, method=name,
                        seed=seed, train_sites=train_sites)
        arm.train_patients = {s: data.ids[tr[s]].tolist() + data.ids[va[s]].tolist() for s in train_sites}
        if fold.groups:
            grouped = {k: v for k, v in fold.groups.items() if len(v) > 1 or v != [k]}
            if grouped:
                arm.notes.append(f"grouped small sites (< {cfg.min_site_size} patients): "
                                 + "; ".join(f"{k} = {'+'.join(v)}" for k, v in grouped.items()))
        return arm

    if method == "clinical-lr":
        idx, vidx = np.concatenate(list(tr.values())), np.concatenate(list(va.values()))
        score = fit_sklearn_lr(data.X[idx], data.y[idx])
        arm = new_arm("clinical-lr", sites)
        arm.threshold = _threshold(data.y[vidx], score(data.X[vidx]))
        arm.notes.append("clinical-lr: pooled (centralised) common.baselines.ClinicalLogistic pipeline (scikit-learn "
                         "logistic regression, C=1) on the encoded canonical clinical features + missing-value "
                         "indicators; Youden threshold on pooled validation splits of the training sites")
        _evaluate(arm, data, fold, score, arm.threshold, cfg)
        arms.append(arm)
    elif method == "local":
        for site in sites:
            y = data.y[tr[site]]
            if len(np.unique(y)) < 2 or len(np.unique(data.y[va[site]])) < 2:
                print(f"clinical experiment: {fold.name}: site {site} has one class in train/val, no local model",
                      file=sys.stderr)
                continue
            score = fit_sklearn_lr(data.X[tr[site]], y)
            arm = new_arm(f"local-{site}", [site])
            arm.threshold = _threshold(data.y[va[site]], score(data.X[va[site]]))
            _evaluate(arm, data, fold, score, arm.threshold, cfg, own_site=site)
            arms.append(arm)
    elif method in ("fedavg-lr", "fedprox-lr"):
        mu = cfg.prox_mu if method == "fedprox-lr" else 0.0
        site_data = {s: (data.X[tr[s]], data.y[tr[s]]) for s in sites}
        val_data = {s: (data.X[va[s]], data.y[va[s]]) for s in sites}
        w, history = fit_federated_lr(site_data, cfg, seed, mu=mu, val_data=val_data)
        from common.metrics import threshold_counts, youden_from_counts

        counts = sum(threshold_counts(yv, _score(w, Xv)) for Xv, yv in val_data.values())
        arm = new_arm(method, sites)
        arm.threshold = youden_from_counts(counts)
        arm.history = history
        arm.notes.append(f"{method}: federated logistic regression, {cfg.rounds} rounds x {cfg.local_epochs} local "
                         f"epochs of mini-batch SGD (lr {cfg.lr}, batch {cfg.batch_size}, l2 {cfg.l2}"
                         + (f", proximal mu {mu}" if mu else "") + ") per site; server aggregation = Flower's "
                         "aggregate_arrayrecords weighted by training patients, run in-process (not via Ray); "
                         "threshold = Youden on validation counts summed over sites")
        _evaluate(arm, data, fold, lambda Z: _score(w, Z), arm.threshold, cfg)
        arms.append(arm)
    elif method == "fednewton-lr":
        arms.append(_fednewton_arm(data, fold, sites, tr, va, new_arm(method, sites), cfg))
    else:
        raise ValueError(f"unknown clinical method {method!r}; known: {ClinicalExperimentConfig.methods}")
    dt = (time.perf_counter() - t0) / max(1, len(arms))
    for arm in arms:
        arm.seconds = dt
    return arms


def run_clinical_experiment(out_dir: Path, cfg: ClinicalExperimentConfig | None = None, *, resume: bool = True,
                            progress: bool = True) -> tuple[list[ArmResult], Path]:
    """Run every fold x method x seed (finished arms resume from ``out_dir/arms``), write the report."""
    from simulation.experiments import run_cached
    from simulation.report import write_report

    cfg = cfg or ClinicalExperimentConfig()
    out_dir = Path(out_dir)
    data = load_mama_mia(cfg.table)
    from common.hashing import stable_hash

    fp = stable_hash({k: v for k, v in to_dict(cfg).items() if k not in ("seeds", "heldout", "heldout_collections",
                                                                          "methods")})
    arms: list[ArmResult] = []
    jobs = [(seed, fold, method) for seed in cfg.seeds for fold in build_folds(data, cfg, seed)
            for method in cfg.methods]
    for k, (seed, fold, method) in enumerate(jobs, 1):
        if progress:
            print(f"[clinical {k}/{len(jobs)}] {fold.name} {method} seed {seed}", flush=True)
        group_id = f"clinical__{fold.name}__{method}__s{seed}"
        arms += run_cached(out_dir / "arms", group_id, lambda: run_fold_method(data, fold, method, seed, cfg),
                           resume=resume, fingerprint=fp)
    notes = [f"{name}: {value:.2f}" for name, value in ANCHORS.items()]
    notes = ["Anchors (AUROC): " + "; ".join(notes),
             f"{len(data.ids)} patients with a 0/1 pCR label and a site; "
             f"{len(data.issues)} adapter issues (listed in config.json)",
             "Sites = MAMA-MIA trial-site codes (DUKE, NACT, I-SPY sites AA*); I-SPY1 and I-SPY2 share site codes, "
             "so an I-SPY site holds patients of both trials"]
    config = {"experiment": "clinical", "clinical_config": to_dict(cfg),
              "adapter_issues": data.issues[:200], "n_patients": int(len(data.ids))}
    report = write_report(arms, out_dir, title="fedpcr — real clinical-only experiment (MAMA-MIA public table)",
                          config=config, semi_synthetic=False, notes=notes, n_boot=cfg.n_boot,
                          pooled_method="clinical-lr")
    return arms, report
