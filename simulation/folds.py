"""Sites, folds and test sets of an image experiment: labelled patients and their seeded splits per site,
the internal / leave-one-institution-out / MRP collection folds, and what each arm is tested on."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulation.arm_result import POOLED
from simulation.experiment_config import ExperimentConfig


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


@dataclass
class TestSet:
    """A named test set: (site, patient ids) parts, scored and reported together."""

    name: str
    parts: list[tuple[str, list[str]]]  # (site, ids)


def test_sets(fold: Fold, sites: dict[str, SiteData], seed: int) -> list[TestSet]:
    """Every training site's internal test split, their pooled union, and the held-out institution (all labelled)."""
    out = [TestSet(s, [(s, sites[s].splits[seed]["test"])]) for s in fold.train]
    out.append(TestSet(POOLED, [(s, sites[s].splits[seed]["test"]) for s in fold.train]))
    if fold.heldout_name:
        out.append(TestSet(fold.heldout_name, [(s, sites[s].ids) for s in fold.heldout]))
    return out
