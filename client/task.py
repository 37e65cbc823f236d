"""Adapter between Flower records and ``common`` (data, model, training, threshold counts).

Everything here runs at the hospital. What it returns to the ClientApp is already reduced to what
may leave the site: model arrays, patient COUNTS, threshold counts on the shared grid and scalar
losses. Patient IDs, per-patient scores and DICOM tags never leave this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from common.config import TrainConfig
from common.data import PCRDataset, SiteCache, load_cache, split_patients
from common.metrics_counts import THRESHOLD_GRID, threshold_counts
from common.models import build_model
from common.models.config import ModelConfig
from common.site_cache import MANIFEST


@dataclass(frozen=True)
class SiteData:
    """A site's cache with its fixed patient split (same seed every run: val/test never train)."""

    cache: SiteCache
    splits: dict[str, list[str]]

    def dataset(self, split: str, model_cfg: ModelConfig, augment: bool = False, seed: int = 0) -> PCRDataset:
        # the model's visits: a cache without them is refused by name (never a silent stand-in)
        return PCRDataset(self.cache, self.splits[split], augment=augment,
                          clinical_features=model_cfg.clinical_features, seed=seed, visits=model_cfg.visits)


def load_site(path: str, seed: int, val_fraction: float, test_fraction: float) -> SiteData:
    """Load a site cache once per process (reloaded when its manifest changes) and split it by patient."""
    manifest = Path(path) / MANIFEST
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0
    return _load_site(str(path), stamp, seed, val_fraction, test_fraction)


@lru_cache(maxsize=8)
def _load_site(path: str, stamp: int, seed: int, val_fraction: float, test_fraction: float) -> SiteData:
    cache = load_cache(Path(path))
    ids = cache.labelled_ids()
    if not ids:
        raise ValueError(f"site cache {path} has no labelled patients")
    splits = split_patients(ids, cache.labels(ids), seed, val_fraction, test_fraction)
    return SiteData(cache=cache, splits=splits)


def arrays_from_model(model: torch.nn.Module, encoding: str | None = None) -> ArrayRecord:
    """State-dict-named ArrayRecord of a model (what travels to the server), in the round's encoding."""
    if encoding in (None, "exact"):
        return ArrayRecord(model.state_dict())
    from flwr.app import Array

    from common.encoding import encode_arrays

    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return ArrayRecord({k: Array(v) for k, v in encode_arrays(state, encoding).items()})


def decode_record(arrays: ArrayRecord, encoding: str | None) -> ArrayRecord:
    """An ArrayRecord received in ``encoding`` back in float32 (unchanged when exact)."""
    if encoding in (None, "exact"):
        return arrays
    from flwr.app import Array

    from common.encoding import decode_arrays

    named = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))
    return ArrayRecord({k: Array(v) for k, v in decode_arrays(named, encoding).items()})


def model_from_arrays(model_cfg: ModelConfig, seed: int, arrays: ArrayRecord,
                      local: ArrayRecord | None = None) -> torch.nn.Module:
    """A model holding ``arrays`` (the global weights), with ``local``'s entries (FedBN norm layers) on top."""
    model = new_model(model_cfg, seed)
    state = dict(arrays.to_torch_state_dict())
    if local is not None:
        state.update({k: v for k, v in local.to_torch_state_dict().items() if k in state})
    own = model.state_dict()
    missing, extra = set(own) - set(state), set(state) - set(own)
    if missing or extra:
        raise ValueError(f"received arrays do not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(extra)[:5]}")
    model.load_state_dict(state)  # copy_ casts each tensor to the model's own dtype
    return model


def local_norm_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's norm-layer tensors (FedBN keeps these in ``context.state``)."""
    keys = norm_keys(model)
    return ArrayRecord({k: v for k, v in model.state_dict().items() if k in keys})


def new_model(model_cfg: ModelConfig, seed: int) -> torch.nn.Module:
    """A freshly initialised model (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    return build_model(model_cfg)


def norm_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of norm layers, selected by module type (FedBN keeps these local)."""
    from common.train import norm_param_keys

    return set(norm_param_keys(model))


def train_local(model: torch.nn.Module, site: SiteData, model_cfg: ModelConfig, train_cfg: TrainConfig,
                epochs: int, prox_mu: float, seed: int) -> dict[str, float]:
    """Train on the site's TRAIN split; returns ``{"loss", "n"}`` (n = training patients)."""
    from common.train import get_weights, train_epochs

    torch.manual_seed(seed)
    dataset = site.dataset("train", model_cfg, augment=train_cfg.augment, seed=seed)
    cfg = dataclasses.replace(train_cfg, prox_mu=float(prox_mu))
    prox_ref = [np.array(w, copy=True) for w in get_weights(model)] if prox_mu > 0 else None
    out = train_epochs(model, dataset, cfg, epochs, prox_ref=prox_ref)
    return {"loss": float(out["loss"]), "n": int(len(dataset))}


def evaluate_local(model: torch.nn.Module, site: SiteData, split: str, model_cfg: ModelConfig,
                   train_cfg: TrainConfig) -> dict[str, Any]:
    """Counts on the threshold grid for one split: ``{"counts", "n", "n_pos", "n_neg", "loss"}``."""
    from common.metrics import binary_cross_entropy
    from common.train import predict

    dataset = site.dataset(split, model_cfg)
    if len(dataset) == 0:
        counts = np.zeros((len(THRESHOLD_GRID), 4), dtype=np.int64)
        return {"counts": counts, "n": 0, "n_pos": 0, "n_neg": 0, "loss": 0.0}
    labels, scores = predict(model, dataset, train_cfg)
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    counts = np.asarray(threshold_counts(labels, scores, THRESHOLD_GRID), dtype=np.int64)
    loss = binary_cross_entropy(labels, scores)
    return {"counts": counts, "n": int(len(labels)), "n_pos": int(labels.sum()),
            "n_neg": int(len(labels) - labels.sum()), "loss": loss}
