"""Binary classification losses on logits: focal loss, (class-weighted) BCE, masked receptor BCE."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = 0.25,
               reduction: str = "mean") -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha for y=1.

    (monai.losses.FocalLoss treats a single channel as background for a scalar alpha, so it does not fit
    binary logits; this is the standard binary form.) ``alpha=None`` disables class balancing.
    """
    targets = targets.to(logits.dtype)
    ce = weighted_bce(logits, targets, reduction="none")  # = -log(p_t), stable
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _reduce(loss, reduction)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float | None = None,
                 reduction: str = "mean") -> torch.Tensor:
    """BCE with logits; ``pos_weight`` (n_neg / n_pos of the TRAINING labels) balances the classes."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    # The one BCE-with-logits call: focal_loss and masked_bce build on this function.
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pw, reduction=reduction)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean BCE over entries with ``present`` = 1 (0 when none are present): the auxiliary receptor loss."""
    present = present.to(logits.dtype)
    loss = weighted_bce(logits, targets, reduction="none") * present
    return loss.sum() / present.sum().clamp_min(1.0)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def pos_weight_from_labels(labels) -> float:  # type: ignore[no-untyped-def]
    """n_neg / n_pos of training labels (1.0 when a class is absent)."""
    import numpy as np

    y = np.asarray(labels, dtype=float)
    y = y[~np.isnan(y)]
    n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
    return n_neg / n_pos if n_pos > 0 and n_neg > 0 else 1.0
