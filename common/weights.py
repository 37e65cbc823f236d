"""Model state <-> numpy arrays: the one weight conversion on the common (Flower-free) side.

Arrays are the model's ``state_dict`` entries (parameters and buffers) in ``state_dict`` order. The
Flower side (client/, server/) converts with ``flwr.app.ArrayRecord(state_dict)`` and
``ArrayRecord.to_torch_state_dict()`` instead; nothing else in common converts weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Model state (parameters and buffers) as numpy copies in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def state_from_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """``{state_dict key: tensor}`` from arrays in :func:`get_weights` order, cast to the model's dtypes.

    A count or shape mismatch raises ``ValueError`` naming the offending key.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"weights: model has {len(state)} state entries, got {len(weights)} arrays")
    out: dict[str, torch.Tensor] = {}
    for (key, ref), arr in zip(state.items(), weights):
        t = torch.as_tensor(np.asarray(arr))
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"weights: {key} expects shape {tuple(ref.shape)}, got {tuple(t.shape)}")
        out[key] = t.to(dtype=ref.dtype)
    return out


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays in :func:`get_weights` order into ``model`` (strict: every entry, matching shapes)."""
    model.load_state_dict(state_from_weights(model, weights), strict=True)


__all__ = ["get_weights", "set_weights", "state_from_weights"]
