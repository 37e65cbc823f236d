"""Differential privacy for training (Opacus DP-SGD) and its (epsilon, delta) accounting; Flower-free.

Sample-level DP: every training step clips each patient's gradient to ``max_grad_norm`` and adds
Gaussian noise ``noise_multiplier * max_grad_norm`` (Opacus ``DPOptimizer``); batches are drawn by
Poisson sampling (rate ``batch_size / n``), which is what Opacus's RDP accountant assumes. The
accountant's history ``[(noise_multiplier, sample_rate, steps), ...]`` is plain data: the site keeps
it on disk across rounds and restarts (``client/privacy.py``); ``fedpcr train --dp`` keeps it in memory.

Used by ``common/train.py`` (``fit`` with a DPConfig), the ClientApp and the simulation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: RDP orders the accountant evaluates: three fractional orders below 2, then integers. Opacus's default list
#: has ~100 fractional orders whose RDP is a slow series (seconds per call at sample rates ~0.3); any set of
#: orders gives a valid bound, this one a slightly larger (conservative) epsilon at a fraction of the cost.
ALPHAS: tuple[float, ...] = (1.25, 1.5, 1.75, *map(float, range(2, 64)), 80.0, 96.0, 128.0, 192.0, 256.0)

#: One accountant entry: (noise multiplier, sample rate, steps) as Opacus's RDPAccountant.history holds it.
HistoryEntry = tuple[float, float, int]


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of one training run (centralised) or one federated run at one site."""

    #: Total budget for the run; training that would exceed it is refused.
    target_epsilon: float = 8.0
    delta: float = 1e-5
    #: Per-sample gradient clipping bound (L2).
    max_grad_norm: float = 1.0
    #: Gaussian noise std / max_grad_norm; 0 = calibrate so the PLANNED steps spend exactly target_epsilon.
    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise ValueError(f"DP target epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"DP delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"DP max grad norm must be > 0, got {self.max_grad_norm}")
        if self.noise_multiplier < 0:
            raise ValueError(f"DP noise multiplier must be >= 0, got {self.noise_multiplier}")


class DPBudgetExceeded(ValueError):
    """The next training would spend more epsilon than allowed (message names spent and allowed)."""

    def __init__(self, spent: float, projected: float, allowed: float, delta: float) -> None:
        super().__init__(f"privacy budget exhausted: epsilon spent so far {spent:.3f}, this round would reach "
                         f"{projected:.3f} > allowed {allowed:.3f} (delta {delta:g})")
        self.spent, self.projected, self.allowed = spent, projected, allowed


# ----------------------------------------------------------------------------- model checks
def validate_model(model: nn.Module) -> None:
    """Refuse a model DP-SGD cannot honour, naming the layer (BatchNorm mixes patients within a batch)."""
    from opacus.validators import ModuleValidator

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"DP-SGD cannot train this model: layer {name!r} is {type(module).__name__}, which mixes "
                             "patients of a batch (per-patient gradients undefined); use norm='group' (GroupNorm)")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"DP-SGD cannot train this model: {errors[0]}")


def _add_not_inplace(block: nn.Module) -> None:
    """MONAI's residual blocks do ``out += residual`` on a hooked layer's output, which Opacus's backward
    hooks forbid; swap the block's class for a subclass whose forward adds out of place (same maths,
    same state_dict)."""
    base = type(block)
    if getattr(base, "_fedpcr_dp", False):
        return

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        if hasattr(self, "conv3"):  # bottleneck
            out = self.act(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        return self.act(out + residual)

    block.__class__ = type(f"DP{base.__name__}", (base,), {"forward": forward, "_fedpcr_dp": True})


def _clinical_grad_sampler(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
                           ) -> dict[nn.Parameter, torch.Tensor]:
    """Per-patient gradients of ClinicalEncoder's own (batched per-variable) weights: its forward takes
    two tensors (values, present), which Opacus's generic functorch path cannot pass. Recomputes the
    encoder per patient with torch.func (dropout off in the recomputation)."""
    from torch.func import grad, vmap

    own = dict(layer.named_parameters(recurse=False))
    mlp = [m for m in layer.mlp if not isinstance(m, nn.Dropout)]  # Linear / activation; no Opacus hooks
    for m in mlp:
        if not isinstance(m, (nn.Linear, nn.ELU, nn.ReLU)):
            raise ValueError(f"DP-SGD: ClinicalEncoder layer {type(m).__name__} has no per-patient gradient rule")

    def head(h: torch.Tensor) -> torch.Tensor:
        for m in mlp:
            h = nn.functional.linear(h, m.weight.detach(), None if m.bias is None else m.bias.detach()) \
                if isinstance(m, nn.Linear) else nn.functional.elu(h) if isinstance(m, nn.ELU) else torch.relu(h)
        return h

    def loss(params: dict[str, torch.Tensor], v: torch.Tensor, pr: torch.Tensor, bp: torch.Tensor) -> torch.Tensor:
        x = torch.stack([v * pr, pr], dim=-1)  # (F, 2), as ClinicalEncoder.forward
        emb = nn.functional.elu(torch.einsum("fi,fid->fd", x, params["var_weight"]) + params["var_bias"])
        return (head(emb.flatten().unsqueeze(0)) * bp.unsqueeze(0)).sum()

    per = vmap(grad(loss), in_dims=(None, 0, 0, 0))({k: p.detach() for k, p in own.items()},
                                                     activations[0], activations[1], backprops)
    return {own[k]: g for k, g in per.items() if own[k].requires_grad}


def _register_samplers() -> None:
    from opacus.grad_sample import GradSampleModule

    from common.models.clinical_encoder import ClinicalEncoder

    GradSampleModule.GRAD_SAMPLERS[ClinicalEncoder] = _clinical_grad_sampler


def prepare_model(model: nn.Module) -> nn.Module:
    """Make ``model`` trainable by Opacus in place (validated, no in-place ops on hooked outputs).

    The root module's own parameters (FusionModel's learned "missing modality" embeddings) are used
    through ``expand`` on a dict batch that Opacus cannot per-sample-differentiate; under DP they are
    frozen at their current (global) value. Everything else trains.
    """
    validate_model(model)
    _register_samplers()
    from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
        if isinstance(module, (ResNetBlock, ResNetBottleneck)):
            _add_not_inplace(module)
    for _, param in model.named_parameters(recurse=False):
        param.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- accounting
def epsilon_of(history: Sequence[HistoryEntry], delta: float) -> float:
    """Epsilon spent by ``history`` at ``delta`` (Opacus RDP accountant); 0 for an empty history."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta, alphas=list(ALPHAS)))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier whose ``steps`` Poisson-sampled steps spend ``target_epsilon`` (Opacus)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=max(1, int(steps)), accountant="rdp", alphas=list(ALPHAS)))


def steps_per_epoch(n: int, batch_size: int) -> tuple[float, int]:
    """(Poisson sample rate, steps per epoch) for ``n`` patients and an expected batch of ``batch_size``."""
    if n < 1:
        raise ValueError("DP-SGD needs at least one training patient")
    rate = min(1.0, batch_size / n)
    return rate, max(1, int(math.ceil(1.0 / rate)))


def check_budget(history: Sequence[HistoryEntry], entry: HistoryEntry, allowed: float, delta: float) -> float:
    """Epsilon after adding ``entry``; raises :class:`DPBudgetExceeded` when it would exceed ``allowed``."""
    spent = epsilon_of(history, delta)
    projected = epsilon_of([*history, entry], delta)
    if projected > allowed + 1e-9:
        raise DPBudgetExceeded(spent, projected, allowed, delta)
    return projected


def save_history(path: str | Path, history: Sequence[HistoryEntry], meta: dict[str, Any] | None = None) -> None:
    """Write the accountant state atomically (JSON) so a restarted process continues it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"history": [list(e) for e in history], **(meta or {})}, indent=1))
    tmp.replace(path)


def load_history(path: str | Path) -> tuple[list[HistoryEntry], dict[str, Any]]:
    """(history, other keys) from :func:`save_history`'s file; empty when it does not exist."""
    path = Path(path)
    if not path.exists():
        return [], {}
    try:
        data = json.loads(path.read_text())
        history = [(float(s), float(q), int(n)) for s, q, n in data.pop("history")]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"privacy accountant state {path} is unreadable ({exc}); refusing to train without it") from exc
    return history, data


# ----------------------------------------------------------------------------- training
def _dp_loss(model: nn.Module, batch: dict[str, Any], cfg: Any, loss_fn: Any) -> torch.Tensor:
    """Batch-mean loss whose every term is one patient's own (the aux loss is averaged per patient first)."""
    out = model(batch)
    loss = loss_fn(out["logit"].float(), batch["label"])
    if out.get("aux") is not None and cfg.aux_weight > 0:
        present = (batch["receptors_present"] * out["modality_mask"][:, :1]).float()
        per = nn.functional.binary_cross_entropy_with_logits(out["aux"].float(), batch["receptors"].float(),
                                                             reduction="none")
        loss = loss + cfg.aux_weight * ((per * present).sum(1) / present.sum(1).clamp_min(1.0)).mean()
    return loss


def train_epochs_dp(model: nn.Module, dataset: Dataset, cfg: Any, epochs: int, noise_multiplier: float,
                    max_grad_norm: float, seed: int = 0) -> dict[str, Any]:
    """DP-SGD passes over ``dataset`` -> ``{"loss", "n", "entry": (noise, sample_rate, steps)}``.

    ``model`` must have been through :func:`prepare_model`. Poisson batches of expected size
    ``cfg.batch_size``; an empty draw is skipped (probability (1-q)^n, negligible for real sites).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from common.data import dataset_labels
    from common.train import _prepare_model, make_loss, make_optimizer, select_device

    device = select_device(cfg)
    _prepare_model(model, device)
    n = len(dataset)
    rate, steps = steps_per_epoch(n, int(cfg.batch_size))
    loss_fn = make_loss(cfg, dataset_labels(dataset))
    gsm = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(make_optimizer(model, cfg), noise_multiplier=float(noise_multiplier),
                            max_grad_norm=float(max_grad_norm), expected_batch_size=int(cfg.batch_size),
                            loss_reduction="mean", generator=torch.Generator().manual_seed(seed))
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=rate, steps=steps,
                                            generator=torch.Generator().manual_seed(seed + 1))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    gsm.train()
    total, count, taken = 0.0, 0, 0
    try:
        for _ in range(int(epochs)):
            for batch in loader:
                taken += 1
                if not isinstance(batch, dict) or int(batch["label"].shape[0]) == 0:
                    continue
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                optimizer.zero_grad(set_to_none=True)
                loss = _dp_loss(gsm, batch, cfg, loss_fn)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(batch["label"].shape[0])
                count += int(batch["label"].shape[0])
    finally:
        gsm._close()  # remove Opacus's hooks: the model goes back to the caller unwrapped
        for p in model.parameters():
            p.grad_sample = None
    return {"loss": total / max(count, 1), "n": n, "entry": (float(noise_multiplier), float(rate), int(taken))}


class DPTrainer:
    """Centralised DP-SGD for ``common.train.fit``: noise calibrated so ``cfg.epochs`` epochs spend the budget,
    accountant in memory; an epoch that would exceed the budget raises :class:`DPBudgetExceeded`."""

    def __init__(self, model: nn.Module, dataset: Dataset, cfg: Any, dp: DPConfig) -> None:
        prepare_model(model)
        self.model, self.dataset, self.cfg, self.dp = model, dataset, cfg, dp
        rate, per_epoch = steps_per_epoch(len(dataset), int(cfg.batch_size))
        self.noise = dp.noise_multiplier or calibrate_noise(dp.target_epsilon, dp.delta, rate,
                                                           per_epoch * int(cfg.epochs))
        self.entry = (self.noise, rate, per_epoch)
        self.history: list[HistoryEntry] = []

    def epoch(self, epoch: int) -> dict[str, Any]:
        """One DP-SGD epoch -> ``{"loss", "n", "epsilon"}`` (epsilon spent so far)."""
        check_budget(self.history, self.entry, self.dp.target_epsilon, self.dp.delta)
        out = train_epochs_dp(self.model, self.dataset, self.cfg, 1, self.noise, self.dp.max_grad_norm,
                              seed=int(self.cfg.seed) * 1000 + epoch)
        self.history.append(out["entry"])
        return {"loss": out["loss"], "n": out["n"], "epsilon": epsilon_of(self.history, self.dp.delta)}


__all__ = ["DPTrainer", "DPBudgetExceeded", "DPConfig", "HistoryEntry", "calibrate_noise", "check_budget", "epsilon_of",
           "load_history", "prepare_model", "save_history", "steps_per_epoch", "train_epochs_dp", "validate_model"]
