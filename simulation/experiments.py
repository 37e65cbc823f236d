"""Image experiments on multi-site caches: folds (internal / held-out institution / MRP), arms, resume.

FLamby protocol: every arm gets the same total compute (local-only and pooled train ``epochs`` epochs;
federated arms run ``rounds`` x ``local_epochs`` with rounds * local_epochs = epochs). Every arm is tested
on each training site's internal test split, on the pooled internal test split and on the held-out
institution, which never touches training, model selection, thresholds or normalisation statistics.

Heavy imports (torch, Flower) happen inside functions so that ``--help`` and the report stay fast.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from common.config import PrepConfig, TrainConfig, to_dict
from simulation.report import POOLED, ArmResult, evaluate_predictions, metric_rows

#: Every arm the harness knows. ``local`` expands to one arm per training site.
ALL_ARMS: tuple[str, ...] = ("local", "pooled", "fedavg", "fedprox", "fedbn", "fedadam", "clinical-lr",
                             "kinetic", "image-only", "clinical-only")
FEDERATED_ARMS: tuple[str, ...] = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi")

#: What an unseen institution gets for normalisation layers (stated in every report).
NORM_RULE = ("Norm layers: the default model uses GroupNorm (no running statistics), so an unseen institution "
             "needs no statistics of its own. FedBN keeps norm-layer parameters local at training sites; on a "
             "held-out institution the FedBN model is evaluated with the server's averaged (global) norm "
             "parameters. Intensity standardisation is per-volume (PrepConfig.standardise), so no site-level "
             "statistic is estimated from any test or held-out data.")


@dataclass(frozen=True)
class ExperimentConfig:
    """One harness run: data, folds, arms, compute budget. ``preset()`` holds the named defaults."""

    name: str = "default"
    #: ``embedded`` (generated cohort) or a real collection layout: ``duke`` | ``ispy2`` | ``mama-mia``.
    dataset: str = "embedded"
    data_root: str | None = None
    #: How patients are assigned to sites on real data: ``site`` | ``trial_site`` | ``scanner`` | ``collection``.
    partition: str = "site"
    min_site_size: int = 0
    #: Embedded cohort: sites and patients per site (None = the generator's defaults).
    cohort_sites: tuple[str, ...] | None = None
    patients_per_site: int | None = None
    cohort_seed: int = 0
    arms: tuple[str, ...] = ALL_ARMS
    #: Leave-one-institution-out over this list (empty = the first site).
    heldout: tuple[str, ...] = ()
    #: Held-out folds in which federated arms run (None = all of ``heldout``); Ray start is expensive.
    federated_heldout: tuple[str, ...] | None = None
    #: Also run the internal fold (every site trains, no held-out institution).
    internal: bool = False
    #: MRP design: held-out collections (train elsewhere, test on Duke, and on I-SPY2).
    heldout_collections: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 6
    local_epochs: int = 2
    prox_mu: float = 0.01
    n_boot: int = 500
    model_preset: str = "small"
    prep: PrepConfig = field(default_factory=PrepConfig)
    #: Fixed-compute protocol: every arm trains ``epochs`` epochs at lr 1e-3 with the product's MONAI augmentation
    #: (no early stop; the best validation epoch is kept). Augmentation raised pooled held-out DUKE AUROC from 0.67
    #: to 0.77 on the default run (docs/experiments.md, "Runtime").
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, patience=100, augment=True, lr=1e-3))

    @property
    def rounds(self) -> int:
        """Federated rounds so that rounds * local_epochs = epochs (same compute as local-only)."""
        return max(1, self.epochs // self.local_epochs)


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """Named experiment presets: ``default`` (10 min / 2 CPU), ``quick`` (3 min), ``mrp``, ``tiny`` (tests)."""
    base = ExperimentConfig(name=name)
    presets: dict[str, dict[str, Any]] = {
        "default": {"heldout": ("DUKE", "AAI"), "federated_heldout": ("DUKE",)},
        "quick": {"seeds": (0,), "epochs": 4, "local_epochs": 2, "patients_per_site": 16, "heldout": ("DUKE",),
                  "arms": ("local", "pooled", "fedavg", "fedbn", "clinical-lr", "kinetic")},
        "mrp": {"heldout": (), "heldout_collections": ("duke", "ispy2"), "seeds": (0,)},
        "tiny": {"seeds": (0,), "epochs": 2, "local_epochs": 1, "n_boot": 50,
                 "arms": ("local", "pooled", "fedavg", "clinical-lr", "kinetic", "image-only")},
    }
    if name not in presets:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(presets)}")
    cfg = replace(base, **presets[name])
    if "epochs" in overrides or "epochs" in presets[name]:
        overrides.setdefault("train", replace(cfg.train, epochs=overrides.get("epochs", cfg.epochs)))
    return replace(cfg, **overrides)


#: Settings that only choose WHICH arms run, not what an arm computes (excluded from the resume fingerprint).
_SELECTION_KEYS = ("name", "seeds", "heldout", "federated_heldout", "arms", "internal", "heldout_collections")


def fingerprint(cfg: ExperimentConfig, caches: dict[str, Path]) -> str:
    """Hash of everything that changes an arm's numbers (settings + the site caches' preprocessing)."""
    from common.hashing import stable_hash

    settings = {k: v for k, v in config_dict(cfg).items() if k not in _SELECTION_KEYS}
    return stable_hash({"settings": settings, "caches": sorted(str(Path(p).resolve()) for p in caches.values())})


def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """JSON-able view of the config (nested dataclasses included)."""
    out = {k: v for k, v in cfg.__dict__.items() if k not in ("prep", "train")}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    out["rounds"] = cfg.rounds
    out["prep"] = to_dict(cfg.prep)
    out["train"] = to_dict(cfg.train)
    return out


# ---------------------------------------------------------------- resume


def run_cached(arms_dir: Path, arm_id: str, compute: Callable[[], list[ArmResult] | ArmResult], *,
               resume: bool = True, fingerprint: str = "") -> list[ArmResult]:
    """Return the arms stored in ``arms_dir/<arm_id>.json`` or compute and store them (resume after a crash).

    A stored arm made with another ``fingerprint`` (settings that change its numbers) is recomputed.
    """
    path = Path(arms_dir) / f"{_safe(arm_id)}.json"
    if resume and path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("fingerprint", "") == fingerprint:
                return [ArmResult(**d) for d in stored["arms"]]
            print(f"resume: {path} was made with other settings; recomputing", file=sys.stderr)
        except (ValueError, KeyError, TypeError) as exc:
            print(f"resume: {path} unreadable ({exc}); recomputing", file=sys.stderr)
    result = compute()
    arms = result if isinstance(result, list) else [result]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    from simulation.report import _json_default

    from dataclasses import asdict

    tmp.write_text(json.dumps({"arm_id": arm_id, "fingerprint": fingerprint, "arms": [asdict(a) for a in arms]},
                              default=_json_default))
    tmp.replace(path)
    return arms


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


# ---------------------------------------------------------------- sites and splits


@dataclass
class SiteData:
    """A prepared site: cache path, labelled patient ids with labels, collection (adapter source) and splits."""

    name: str
    cache: Path
    ids: list[str]
    labels: dict[str, int]
    collection: str
    splits: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # seed -> train/val/test
    loaded: Any = None  # common.data.SiteCache


def load_sites(caches: dict[str, Path], cfg: ExperimentConfig) -> dict[str, SiteData]:
    """Read every site cache's manifest, keep labelled patients, and split them per seed (stratified)."""
    from common.data import load_cache, split_patients

    sites: dict[str, SiteData] = {}
    for name, path in sorted(caches.items()):
        cache = load_cache(path)
        ids = cache.labelled_ids()
        labels = {pid: int(y) for pid, y in zip(ids, cache.labels(ids))}
        clin = cache.clinical
        source = "unknown"
        if "source" in clin.columns and clin["source"].notna().any():
            source = str(clin["source"].dropna().mode().iloc[0])
        site = SiteData(name=name, cache=Path(path), ids=ids, labels=labels, collection=source, loaded=cache)
        for seed in cfg.seeds:
            parts = split_patients(ids, [labels[i] for i in ids], seed, cfg.train.val_fraction,
                                   cfg.train.test_fraction)
            site.splits[seed] = {k: [str(i) for i in v] for k, v in parts.items()}
        sites[name] = site
    return sites


@dataclass
class Fold:
    """Training sites and the held-out institution(s) of one experiment."""

    name: str
    train: list[str]
    heldout: list[str]  # sites whose patients form the held-out test set (may be several for a collection)
    heldout_name: str | None


def make_folds(sites: dict[str, SiteData], cfg: ExperimentConfig) -> list[Fold]:
    """Internal fold, one leave-one-institution-out fold per ``heldout`` site, and MRP collection folds."""
    names = sorted(sites)
    folds: list[Fold] = []
    if cfg.internal:
        folds.append(Fold("internal", names, [], None))
    heldout = cfg.heldout or ((names[0],) if not cfg.heldout_collections and not cfg.internal else ())
    for h in heldout:
        if h not in sites:
            raise ValueError(f"held-out site {h!r} is not one of the sites {names}")
        folds.append(Fold(f"heldout-{h}", [s for s in names if s != h], [h], h))
    for coll in cfg.heldout_collections:
        held = [s for s in names if sites[s].collection.lower() == coll.lower()]
        if not held:
            print(f"experiment: no site of collection {coll!r} (collections: "
                  f"{sorted({s.collection for s in sites.values()})}); fold skipped", file=sys.stderr)
            continue
        folds.append(Fold(f"mrp-heldout-{coll}", [s for s in names if s not in held], held, coll))
    return folds


# ---------------------------------------------------------------- evaluation


@dataclass
class TestSet:
    name: str
    parts: list[tuple[str, list[str]]]  # (site, ids)


def test_sets(fold: Fold, sites: dict[str, SiteData], seed: int) -> list[TestSet]:
    """Every training site's internal test split, their pooled union, and the held-out institution (all labelled)."""
    out = [TestSet(s, [(s, sites[s].splits[seed]["test"])]) for s in fold.train]
    out.append(TestSet(POOLED, [(s, sites[s].splits[seed]["test"]) for s in fold.train]))
    if fold.heldout_name:
        out.append(TestSet(fold.heldout_name, [(s, sites[s].ids) for s in fold.heldout]))
    return out


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


# ---------------------------------------------------------------- arms


def _model_cfg(cfg: ExperimentConfig, kind: str) -> Any:
    from common.models.config import preset as model_preset

    overrides: dict[str, Any] = {"in_channels": len(cfg.prep.channels)}
    if kind == "image-only":
        overrides.update(use_clinical=False, modality_dropout=0.0)
    elif kind == "clinical-only":
        overrides.update(use_image=False, aux_receptor_head=False, modality_dropout=0.0)
    return model_preset(cfg.model_preset, **overrides)


def _datasets(sites: dict[str, SiteData], names: list[str], seed: int, part: str, augment: bool) -> Any:
    from common.data import PCRDataset, pool_datasets

    return pool_datasets([PCRDataset(sites[s].loaded, sites[s].splits[seed][part], augment=augment, seed=seed)
                          for s in names])


def _network_scorer(model: Any, model_cfg: Any, train_cfg: TrainConfig,
                    sites: dict[str, SiteData]) -> Callable[[str, list[str]], np.ndarray]:
    from common.data import PCRDataset
    from common.train import predict

    def score(site: str, ids: list[str]) -> np.ndarray:
        _, s = predict(model, PCRDataset(sites[site].loaded, ids, augment=False), train_cfg)
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
    res = fit(model, _datasets(sites, names, seed, "train", train_cfg.augment),
              _datasets(sites, names, seed, "val", False), train_cfg, log=None)
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
    elif arm_name in ("pooled", "image-only", "clinical-only"):
        arm = new(arm_name, fold.train)
        kind = "fusion" if arm_name == "pooled" else arm_name
        model, mcfg, arm.threshold, _ = _train_network(cfg, sites, fold.train, seed, kind)
        arm.notes.append(f"{arm_name}: centralised training on the pooled training splits of the training sites, "
                         f"{cfg.epochs} epochs, early stopping + threshold on their pooled validation splits")
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
        raise ValueError(f"unknown arm {arm_name!r}; known: {ALL_ARMS}")
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
    model = bundle.model if hasattr(bundle, "model") else _model_from_bundle(bundle, model_cfg)
    arm.threshold = float(getattr(bundle, "threshold", 0.5) or 0.5)
    arm.history = [dict(h) for h in (result.history or [])]
    arm.notes.append(f"{strategy}: Flower ServerApp + ClientApp in the Ray simulation engine, one SuperNode per "
                     f"training site, {cfg.rounds} rounds x {cfg.local_epochs} local epochs (= {cfg.epochs} epochs)")
    if strategy == "fedbn":
        arm.notes.append("fedbn on a held-out institution: evaluated with the server's averaged (global) norm "
                         "parameters; on training sites' tests too (their local norm layers stay on the sites)")
    _evaluate_arm(arm, fold, sites, _network_scorer(model, model_cfg, cfg.train, sites), cfg)
    return arm


def _model_from_bundle(bundle: Any, model_cfg: Any) -> Any:
    from common.models import build_model

    model = build_model(getattr(bundle, "model_cfg", model_cfg))
    model.load_state_dict(bundle.state_dict)
    return model


# ---------------------------------------------------------------- run


def plan(cfg: ExperimentConfig, folds: list[Fold]) -> list[tuple[Fold, str, int]]:
    """(fold, arm, seed) jobs in run order; federated arms only in ``federated_heldout`` folds."""
    jobs = []
    for seed in cfg.seeds:
        for fold in folds:
            for arm in cfg.arms:
                if arm in FEDERATED_ARMS and cfg.federated_heldout is not None and fold.heldout_name and \
                        fold.heldout_name not in cfg.federated_heldout:
                    continue
                jobs.append((fold, arm, seed))
    return jobs


def run_experiment(cfg: ExperimentConfig, caches: dict[str, Path], out_dir: Path, *, resume: bool = True,
                   progress: Callable[[str], None] = print, failures: list[str] | None = None) -> list[ArmResult]:
    """Run every planned (fold, arm, seed); finished arms are read back from ``out_dir/arms``.

    An arm that raises is reported (appended to ``failures``) and the run goes on.
    """
    sites = load_sites(caches, cfg)
    folds = make_folds(sites, cfg)
    jobs = plan(cfg, folds)
    fp = fingerprint(cfg, caches)
    failures = failures if failures is not None else []
    arms: list[ArmResult] = []
    t_start = time.perf_counter()
    for k, (fold, arm_name, seed) in enumerate(jobs, 1):
        arm_id = f"{fold.name}__{arm_name}__s{seed}"
        t0 = time.perf_counter()
        try:
            got = run_cached(out_dir / "arms", arm_id,
                             lambda: run_arm(cfg, sites, fold, arm_name, seed, out_dir / "work"), resume=resume,
                             fingerprint=fp)
        except Exception as exc:  # noqa: BLE001 - one failing arm is reported; the others still run
            failures.append(f"{arm_id}: {type(exc).__name__}: {exc}")
            progress(f"[{k}/{len(jobs)}] {arm_id}: FAILED ({type(exc).__name__}: {exc})")
            continue
        arms += got
        auc = [r["value"] for a in got for r in a.rows
               if r["metric"] == "auroc" and r["test_site"] == (fold.heldout_name or POOLED)]
        shown = f"AUROC {np.nanmean(auc):.3f}" if auc and np.isfinite(np.nanmean(auc)) else ""
        progress(f"[{k}/{len(jobs)}] {arm_id}: {time.perf_counter() - t0:.1f} s {shown} "
                 f"(elapsed {time.perf_counter() - t_start:.0f} s)")
    return arms


# ---------------------------------------------------------------- data preparation


def _prepare_one(dicom_root: Path, clinical: Path | None, cache: Path, prep: PrepConfig, *,
                 fmt: str | None = None, boxes: Path | None = None, site: str | None = None) -> Path:
    """Prepare one DICOM tree + clinical table into a site cache (``common.preprocess.pipeline``)."""
    from common.preprocess.pipeline import run_prepare

    result = run_prepare(dicom_root, clinical, cache, prep, clinical_format=fmt, boxes=boxes, site=site,
                         workers=_workers(), progress=False)
    print(result.summary().splitlines()[0], flush=True)
    return cache


def _workers() -> int:
    """Worker processes for preparation: the CPU cores this process may use."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _cache_is_current(cache: Path, prep: PrepConfig) -> bool:
    try:
        return json.loads((cache / "prep_config.json").read_text()).get("hash") == prep.hash() and \
            (cache / "manifest.csv").is_file()
    except (OSError, ValueError):
        return False


def prepare_sites(cfg: ExperimentConfig, out_dir: Path, *, clinical: Path | None = None,
                  progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Site caches for ``cfg``: the embedded cohort (generated when missing) or a real TCIA collection.

    Existing caches with the same preprocessing hash are reused.
    """
    out_dir = Path(out_dir)
    if cfg.dataset == "embedded":
        from common.hashing import stable_hash

        # One cohort folder per generator setting, so --quick and the default run never overwrite each other.
        key = stable_hash({"sites": list(cfg.cohort_sites or ()), "patients_per_site": cfg.patients_per_site,
                           "seed": cfg.cohort_seed})[:8]
        cohort = out_dir / f"cohort-{key}"
        if not (cohort / "cohort.json").is_file():
            from simulation.cohort import write_cohort

            progress(f"generating the embedded cohort in {cohort} ...")
            kwargs: dict[str, Any] = {"seed": cfg.cohort_seed}
            if cfg.cohort_sites:
                kwargs["sites"] = list(cfg.cohort_sites)
            if cfg.patients_per_site:
                kwargs["patients_per_site"] = cfg.patients_per_site
            write_cohort(cohort, **kwargs)
        caches: dict[str, Path] = {}
        for site_dir in sorted(p for p in cohort.iterdir() if (p / "dicom").is_dir()):
            cache = out_dir / "caches" / f"{cohort.name}-{cfg.prep.hash()[:8]}" / site_dir.name
            if not _cache_is_current(cache, cfg.prep):
                clin = next((site_dir / n for n in ("clinical.xlsx", "clinical.csv") if (site_dir / n).is_file()),
                            None)
                boxes = site_dir / "Annotation_Boxes.xlsx"
                progress(f"preparing site {site_dir.name} ...")
                _prepare_one(site_dir / "dicom", clin, cache, cfg.prep, boxes=boxes if boxes.is_file() else None,
                             site=site_dir.name)
            caches[site_dir.name] = cache
        if not caches:
            raise FileNotFoundError(f"no site folders with dicom/ under {cohort}")
        return caches
    return _prepare_real(cfg, out_dir, clinical, progress)


def _prepare_real(cfg: ExperimentConfig, out_dir: Path, clinical: Path | None,
                  progress: Callable[[str], None]) -> dict[str, Path]:
    """A real collection: prepare it as one cache, then split it into site caches by ``cfg.partition``."""
    from common import paths
    from simulation.partition import assign_from_dicom, assign_from_table, make_partition, split_caches

    if not cfg.data_root:
        raise ValueError(f"--dataset {cfg.dataset} needs --data-root (the TCIA download folder)")
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    default_tables = {"duke": paths.DUKE_CLINICAL, "ispy2": paths.ISPY2_CLINICAL, "mama-mia": paths.MAMA_MIA_TABLE}
    table = Path(clinical) if clinical else default_tables[cfg.dataset]
    # Tumour boxes: next to the download or the clinical table, else the public Duke file for Duke.
    candidates = [root / "Annotation_Boxes.xlsx", table.parent / "Annotation_Boxes.xlsx"]
    boxes = next((b for b in candidates if b.is_file()), paths.DUKE_BOXES if cfg.dataset == "duke" else None)
    prep = cfg.prep
    if boxes is None and prep.crop == "tumour":
        progress(f"no tumour boxes for {cfg.dataset}: using crop='breast' (whole-breast volume)")
        prep = replace(prep, crop="breast")
    whole = out_dir / "caches" / f"_{cfg.dataset}_all"
    if not _cache_is_current(whole, prep):
        progress(f"preparing {root} ({cfg.dataset}) into {whole} ...")
        _prepare_one(root, table, whole, prep, fmt=cfg.dataset, boxes=boxes)
    manifest = pd.read_csv(whole / "manifest.csv", dtype={"patient_id": str})
    if cfg.partition in ("trial_site", "site") and cfg.dataset != "mama-mia":
        try:
            assign = assign_from_dicom(root, by="trial_site")
        except ValueError:
            assign = _assign_from_mama_mia(manifest)
    elif cfg.partition == "site":
        assign = _assign_from_mama_mia(manifest)
    else:
        assign = assign_from_table(manifest, by=cfg.partition)
    assign = {pid: s for pid, s in assign.items() if pid in set(manifest["patient_id"])} or \
        _assign_by_key(manifest, assign)
    part = make_partition(assign, key=cfg.partition, min_site_size=cfg.min_site_size, keep=cfg.heldout)
    progress(f"partition by {cfg.partition}: " + ", ".join(f"{s} ({n})" for s, n in part.sizes().items()))
    return split_caches([whole], part.site_of(), out_dir / "caches" / cfg.partition)


def _assign_by_key(manifest: pd.DataFrame, assign: dict[str, str]) -> dict[str, str]:
    """Match DICOM PatientIDs / table ids to manifest ids across spellings (``id_key``)."""
    from common.preprocess.clinical import id_key

    by_key = {id_key(k): v for k, v in assign.items()}
    return {pid: by_key[id_key(pid)] for pid in manifest["patient_id"] if id_key(pid) in by_key}


def _assign_from_mama_mia(manifest: pd.DataFrame) -> dict[str, str]:
    """Patient -> MAMA-MIA ``site`` (trial-site code) by the id comparison key."""
    from common import paths

    table = pd.read_excel(paths.MAMA_MIA_TABLE, sheet_name="dataset_info", usecols=["patient_id", "site"])
    return _assign_by_key(manifest, dict(zip(table["patient_id"].astype(str), table["site"].astype(str))))
