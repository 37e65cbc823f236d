"""Experiment settings: the arms the harness knows, :class:`ExperimentConfig`, named presets, and the
fingerprint that decides whether a stored arm is still valid."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.config import PrepConfig, TrainConfig, to_dict

#: Every arm the harness knows. ``local`` expands to one arm per training site.
ALL_ARMS: tuple[str, ...] = ("local", "pooled", "fedavg", "fedprox", "fedbn", "fedadam", "clinical-lr",
                             "kinetic", "image-only", "clinical-only")

#: Arms whose model also reads the early-treatment visit (ModelConfig.visits = ("pre", "early")); they need
#: caches prepared with PrepConfig.visits = ("pre", "early") (the ``early-visit`` experiment).
VISIT_ARMS: tuple[str, ...] = ("pooled-early",)

#: Arms trained by Flower (ServerApp + ClientApp in the simulation engine).
FEDERATED_ARMS: tuple[str, ...] = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi")

#: What an unseen institution gets for normalisation layers (stated in every report).
NORM_RULE = ("Norm layers: the default model uses GroupNorm (no running statistics), so an unseen institution "
             "needs no statistics of its own. FedBN keeps norm-layer parameters local at training sites; on a "
             "held-out institution the FedBN model is evaluated with the server's averaged (global) norm "
             "parameters. Intensity standardisation is per-volume (PrepConfig.standardise), so no site-level "
             "statistic is estimated from any test or held-out data.")


#: The larger semi-synthetic cohort (``large`` preset, simulation/ablation.py): DUKE and AAI have 280 / 168
#: labelled MAMA-MIA anchors, so both can be held out with 160 patients; AAN 126, AAE 84, NACT 64 train.
LARGE_SITES: tuple[str, ...] = ("DUKE", "AAI", "AAN", "AAE", "NACT")
LARGE_PATIENTS = 160


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
    #: Embedded cohort: write the early-treatment visit (I-SPY-style sites; simulation.early_visit).
    early_visit: bool = False
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
    #: 6 rounds x 1 local epoch: closer to pooled than 3 x 2 or 2 x 3 at equal compute (simulation/ablation.py)
    local_epochs: int = 1
    prox_mu: float = 0.01
    #: Bootstrap resamples behind every CI (2000 adds ~1 s to the default run: 250 evaluations of 10-50 patients).
    n_boot: int = 2000
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


#: The early-visit experiment's data: I-SPY2 AAI and AAQ, I-SPY1 AAB with their early-treatment visits, both
#: visits cached (PrepConfig.visits); the held-out institution is I-SPY2 AAQ (Philips; it never trains).
_EARLY: dict[str, Any] = {
    "cohort_sites": ("AAI", "AAQ", "ISPY1_AAB"), "early_visit": True, "heldout": ("AAQ",),
    "arms": ("pooled", "pooled-early", "clinical-lr"), "prep": PrepConfig(visits=("pre", "early")),
}


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """Named experiment presets: ``default`` (10 min / 2 CPU), ``quick`` (3 min), ``mrp``, ``tiny`` (tests),
    ``early-visit`` / ``early-visit-quick`` (pre-only vs pre+early fusion at a held-out I-SPY2 site),
    ``privacy`` / ``privacy-quick`` (FedAvg at several DP budgets, held-out DUKE)."""
    base = ExperimentConfig(name=name)
    presets: dict[str, dict[str, Any]] = {
        "default": {"heldout": ("DUKE", "AAI")},  # federated arms in both held-out folds (issue 15)
        "quick": {"seeds": (0,), "epochs": 4, "patients_per_site": 16, "heldout": ("DUKE",),
                  "arms": ("local", "pooled", "fedavg", "fedadam", "clinical-lr", "kinetic")},
        "mrp": {"heldout": (), "heldout_collections": ("duke", "ispy2"), "seeds": (0,)},
        "tiny": {"seeds": (0,), "epochs": 2, "local_epochs": 1, "n_boot": 50,
                 "arms": ("local", "pooled", "fedavg", "clinical-lr", "kinetic", "image-only")},
        # pre-only vs pre+early fusion, trained pooled on I-SPY-style sites, tested at an unseen I-SPY2 site
        "early-visit": {**_EARLY, "seeds": (0, 1), "epochs": 8},
        "early-visit-quick": {**_EARLY, "seeds": (0,), "epochs": 4, "patients_per_site": 16, "n_boot": 300},
        # statistical power (issue 15): held-out DUKE and AAI with 160 patients each, federated arms on both
        "large": {"cohort_sites": LARGE_SITES, "patients_per_site": LARGE_PATIENTS, "heldout": ("DUKE", "AAI"),
                  "federated_heldout": None, "seeds": (0, 1, 2), "n_boot": 2000,
                  "arms": ("local", "pooled", "fedavg", "fedprox", "fedadam", "clinical-lr")},
        # DP budgets (simulation/privacy_experiment.py): the default cohort size (DP-SGD on the quick preset's
        # 16 patients per site only adds noise to noise), 3 seeds; the quick run keeps one
        # (3 rounds x 2 local epochs, as measured in docs/privacy.md)
        "privacy": {"heldout": ("DUKE",), "federated_heldout": ("DUKE",), "seeds": (0, 1, 2), "local_epochs": 2},
        "privacy-quick": {"heldout": ("DUKE",), "federated_heldout": ("DUKE",), "seeds": (0,), "local_epochs": 2},
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
