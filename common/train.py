"""Flower-free training and inference loops shared by local, pooled and federated training.

Device auto-selection (CUDA + AMP, else CPU), focal / weighted BCE loss with the auxiliary receptor
loss, AdamW/RAdam, optional FedProx proximal term, early stopping on validation AUROC, and a validation
operating threshold. Metrics (AUROC, BCE, Youden) come from ``common.metrics``; weights convert to numpy
lists in ``state_dict`` order through ``common.weights``.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.config import TrainConfig
from common.data import dataset_labels, leaf_datasets
from common.losses import focal_loss, masked_bce, pos_weight_from_labels, weighted_bce
from common.metrics import auroc, binary_cross_entropy, choose_threshold
from common.weights import get_weights, set_weights, state_from_weights

#: Module types whose parameters and buffers are "norm layers" (FedBN keeps them local).
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                                           nn.LocalResponseNorm)


@dataclass
class FitResult:
    """Outcome of :func:`fit`: best weights (by validation AUROC), per-epoch history, threshold."""

    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    val_auroc: float = float("nan")
    threshold: float = 0.5
    best_epoch: int = 0
    val_labels: np.ndarray | None = None
    val_scores: np.ndarray | None = None


# ----------------------------------------------------------------------------- setup
def seed_everything(seed: int, deterministic: bool | None = None) -> None:
    """Seed python, numpy and torch. ``deterministic`` (default: on CPU only, where it costs nothing)
    selects deterministic kernels; on CUDA the fast cuDNN autotuner is kept unless asked otherwise."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.manual_seed_all(seed)
    if deterministic is None:
        deterministic = not cuda
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True


def select_device(cfg: TrainConfig) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"TrainConfig.device={cfg.device!r} but CUDA is not available")
    if cfg.device != "cpu" and not cfg.device.startswith("cuda"):
        raise ValueError(f"unknown device {cfg.device!r}; use auto, cpu or cuda")
    return torch.device(cfg.device)


def _use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    return bool(cfg.amp) and device.type == "cuda"


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or RAdam over trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or radam")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule of :func:`fit`: ``cosine`` anneals to 0 over ``cfg.epochs``, ``constant`` -> None.

    (TrainConfig rejects any other value when it is built.)
    """
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(cfg.epochs)))
    return None


def make_loss(cfg: TrainConfig, train_labels: np.ndarray) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pCR loss; ``weighted_bce`` balances classes with the TRAINING labels' n_neg/n_pos."""
    if cfg.loss == "focal":
        return lambda z, y: focal_loss(z, y, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha)
    if cfg.loss == "bce":
        return lambda z, y: weighted_bce(z, y)
    if cfg.loss == "weighted_bce":
        pw = pos_weight_from_labels(train_labels)
        return lambda z, y: weighted_bce(z, y, pos_weight=pw)
    raise ValueError(f"unknown loss {cfg.loss!r}; use focal, bce or weighted_bce")


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    base = int(torch.initial_seed()) % (2**31)
    np.random.seed((base + worker_id) % (2**32))
    random.seed(base + worker_id)
    if info is not None:
        for leaf in leaf_datasets(info.dataset):
            leaf.set_random_state(base + worker_id)


def _loader(dataset: Dataset, cfg: TrainConfig, device: torch.device, *, train: bool) -> DataLoader:
    generator = None
    drop_last = False
    if train:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # from the seeded global stream
        generator = torch.Generator().manual_seed(seed)
        for leaf in leaf_datasets(dataset):
            leaf.set_random_state(seed)
        # a final batch of one sample breaks BatchNorm statistics; drop it
        drop_last = len(dataset) > cfg.batch_size and len(dataset) % cfg.batch_size == 1
    workers = max(0, int(cfg.num_workers))
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=train, generator=generator, drop_last=drop_last,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, worker_init_fn=_worker_init if workers else None)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "image" and device.type == "cuda":
                value = value.contiguous(memory_format=torch.channels_last_3d)
        out[key] = value
    return out


#: CPU intra-op threads for training/inference (env FEDPCR_CPU_THREADS). One thread is the default: on a
#: shared 2-core machine two threads ran 3-30x SLOWER than one (OpenMP spin-waits under contention), and
#: Flower's simulation runs one client process per core anyway.
CPU_THREADS_ENV = "FEDPCR_CPU_THREADS"


def configure_cpu_threads() -> int:
    """Apply the CPU thread policy (FEDPCR_CPU_THREADS, default 1); returns the thread count."""
    try:
        n = max(1, int(os.environ.get(CPU_THREADS_ENV, "1")))
    except ValueError:
        raise ValueError(f"{CPU_THREADS_ENV} must be a positive integer, got {os.environ[CPU_THREADS_ENV]!r}") from None
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cpu":
        configure_cpu_threads()
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last_3d)
    return model


# ----------------------------------------------------------------------------- weights
# get_weights / set_weights live in common.weights (the one numpy conversion); re-exported here because
# client/task.py imports them from common.train.
def norm_param_keys(model: nn.Module) -> set[str]:
    """``state_dict`` keys of norm layers (Batch/Instance/Group/Layer norm), found by module type."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in module.state_dict().keys())
    return keys


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx term mu/2 * sum ||w - w_global||^2 over trainable parameters present in ``reference``."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if param.requires_grad and name in reference:
            total = total + (param - reference[name]).pow(2).sum()
    return 0.5 * mu * total


def _reference_params(model: nn.Module, prox_ref: Sequence[np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """FedProx reference: the trainable parameters of ``prox_ref`` (``get_weights`` order) on ``device``."""
    params = dict(model.named_parameters())
    return {k: t.to(device) for k, t in state_from_weights(model, prox_ref).items() if k in params}


# ----------------------------------------------------------------------------- loops
def _batch_loss(model: nn.Module, batch: dict[str, Any], cfg: TrainConfig, loss_fn: Callable) -> torch.Tensor:
    out = model(batch)
    loss = loss_fn(out["logit"].float(), batch["label"])
    if out.get("aux") is not None and cfg.aux_weight > 0:
        present = batch["receptors_present"] * out["modality_mask"][:, :1]  # only where the image was used
        loss = loss + cfg.aux_weight * masked_bce(out["aux"].float(), batch["receptors"], present)
    return loss


def train_epochs(model: nn.Module, dataset: Dataset, cfg: TrainConfig, epochs: int,
                 prox_ref: list[np.ndarray] | None = None, *,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Train ``epochs`` passes over ``dataset`` -> ``{"loss": mean per-sample loss, "n": patients}``.

    ``prox_ref`` (weights in ``state_dict`` order) adds the FedProx term with ``cfg.prox_mu``.
    A fresh optimizer is made unless one is given (``fit`` keeps one across epochs).
    """
    device = select_device(cfg)
    _prepare_model(model, device)
    optimizer = optimizer or make_optimizer(model, cfg)
    labels = dataset_labels(dataset)
    if np.isnan(labels).any():
        raise ValueError("training dataset holds unlabelled patients; split only labelled ones")
    loss_fn = make_loss(cfg, labels)
    reference = _reference_params(model, prox_ref, device) if prox_ref is not None and cfg.prox_mu > 0 else None
    amp = _use_amp(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    model.train()
    total, count = 0.0, 0
    for _ in range(int(epochs)):
        for batch in _loader(dataset, cfg, device, train=True):
            batch = _to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = _batch_loss(model, batch, cfg, loss_fn)
            objective = loss + proximal_term(model, reference, cfg.prox_mu) if reference is not None else loss
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            n = int(batch["label"].shape[0])
            total += float(loss.detach()) * n
            count += n
    return {"loss": total / max(count, 1), "n": int(len(dataset))}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, cfg: TrainConfig,
            modality_mask: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, pCR probabilities) in dataset order, eval mode, never augmented.

    ``modality_mask`` (1, 2) or (2,) [image, clinical] switches inputs off for every sample.
    """
    device = select_device(cfg)
    _prepare_model(model, device)
    leaves = leaf_datasets(dataset)
    saved = [leaf.augment for leaf in leaves]
    for leaf in leaves:
        leaf.augment = False
    model.eval()
    labels, scores = [], []
    amp = _use_amp(cfg, device)
    try:
        for batch in _loader(dataset, cfg, device, train=False):
            batch = _to_device(batch, device)
            mask = None
            if modality_mask is not None:
                mask = modality_mask.view(1, 2).expand(batch["label"].shape[0], 2)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                out = model(batch, mask)
            scores.append(torch.sigmoid(out["logit"].float()).cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
    finally:
        for leaf, aug in zip(leaves, saved):
            leaf.augment = aug
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(labels), np.concatenate(scores)


def operating_threshold(labels: np.ndarray, scores: np.ndarray, cfg: TrainConfig) -> float:
    """Threshold chosen on VALIDATION data by (weighted) Youden (``common.metrics.choose_threshold``);
    0.5 when the validation labels hold one class only (no operating point can be chosen)."""
    w = cfg.threshold_weight()
    y = np.asarray(labels, dtype=float)
    if len(np.unique(y)) < 2:
        return 0.5
    return float(choose_threshold(y, np.asarray(scores), w=w))


def fit(model: nn.Module, train_ds: Dataset, val_ds: Dataset, cfg: TrainConfig,
        log: Callable[[str], None] | None = print,
        epoch_fn: Callable[[int], dict[str, Any]] | None = None) -> FitResult:
    """Train up to ``cfg.epochs`` with early stopping on validation AUROC (``cfg.patience``); the model
    ends holding the best weights; the threshold is chosen on the validation predictions.
    ``epoch_fn(epoch) -> {"loss", ...}`` replaces one epoch's training (DP-SGD: ``common.dp.DPTrainer(...).epoch``,
    whose ``epsilon`` goes into each history row)."""
    device = select_device(cfg)
    seed_everything(cfg.seed, deterministic=device.type == "cpu")
    _prepare_model(model, device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    best_state = copy.deepcopy(model.state_dict())
    best_score, best_epoch, since_best = -math.inf, 0, 0
    best_val: tuple[np.ndarray, np.ndarray] | None = None
    history: list[dict[str, float]] = []
    for epoch in range(1, int(cfg.epochs) + 1):
        t0 = time.perf_counter()
        stats = epoch_fn(epoch) if epoch_fn is not None else train_epochs(model, train_ds, cfg, 1, optimizer=optimizer)
        if scheduler is not None:
            scheduler.step()
        y, s = predict(model, val_ds, cfg) if len(val_ds) else (np.zeros(0), np.zeros(0))
        val_auc = auroc(y, s)
        val_loss = binary_cross_entropy(y, s)
        # selection score: AUROC; with a single-class validation set fall back to -val loss
        score = val_auc if not math.isnan(val_auc) else -val_loss if not math.isnan(val_loss) else -stats["loss"]
        row = {"epoch": epoch, "train_loss": stats["loss"], "val_auroc": val_auc, "val_loss": val_loss,
               "seconds": time.perf_counter() - t0}
        if "epsilon" in stats:
            row["epsilon"] = stats["epsilon"]
        history.append(row)
        improved = score > best_score
        if improved:
            best_score, best_epoch, since_best = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_val = (y, s)
        else:
            since_best += 1
        if log is not None:
            log(f"epoch {epoch:3d}/{cfg.epochs}  train loss {stats['loss']:.4f}  val loss {val_loss:.4f}  "
                f"val AUROC {val_auc:.3f}{'  *' if improved else ''}  ({row['seconds']:.1f}s)")
        if cfg.patience > 0 and since_best >= cfg.patience:
            if log is not None:
                log(f"early stop: no validation improvement for {cfg.patience} epochs (best epoch {best_epoch})")
            break
    model.load_state_dict(best_state)
    y, s = best_val if best_val is not None else (np.zeros(0), np.zeros(0))
    threshold = operating_threshold(y, s, cfg) if len(y) else 0.5
    return FitResult(best_state=best_state, history=history, val_auroc=auroc(y, s) if len(y) else float("nan"),
                     threshold=threshold, best_epoch=best_epoch, val_labels=y, val_scores=s)


__all__ = ["FitResult", "NORM_TYPES", "configure_cpu_threads", "fit", "get_weights", "make_loss", "make_optimizer",
           "make_scheduler", "norm_param_keys", "operating_threshold", "predict", "proximal_term", "seed_everything",
           "select_device", "set_weights", "train_epochs"]
