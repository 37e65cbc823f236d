"""Later imaging visits (e.g. early-treatment MRI) for the fusion model: the baseline's image encoder with
shared weights, plus a learned embedding of days since baseline, and a learned stand-in when a visit is
missing, so patients with and without the visit train together (MRP's time embedding between visits).

Batch keys for a later visit ``v`` (``common.data`` yields them): ``image_<v>`` (N, C, Z, Y, X),
``<v>_present`` (N,) 0/1 and ``<v>_days`` (N,) days since the baseline MRI.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def visit_keys(visit: str) -> tuple[str, str, str]:
    """Batch keys (image, present, days) of a later visit."""
    return f"image_{visit}", f"{visit}_present", f"{visit}_days"


class VisitEmbedding(nn.Module):
    """Features of one later visit: shared image encoder + time embedding, or a learned missing vector."""

    def __init__(self, features: int, days_scale: float) -> None:
        super().__init__()
        self.days_scale = float(days_scale)
        self.time = nn.Sequential(nn.Linear(1, features), nn.Tanh(), nn.Linear(features, features))
        self.missing = nn.Parameter(torch.zeros(features))

    def forward(self, encoder: nn.Module, batch: dict[str, Any], visit: str, n: int) -> torch.Tensor:
        image_key, present_key, days_key = visit_keys(visit)
        missing = self.missing.unsqueeze(0).expand(n, -1)
        image = batch.get(image_key)
        if not isinstance(image, torch.Tensor):
            return missing
        present = batch.get(present_key)
        present = torch.ones(n, device=image.device) if present is None else present.to(image.device).float().view(-1)
        if not present.any():
            return missing
        days = batch.get(days_key)
        days = torch.zeros(n, device=image.device) if days is None else days.to(image.device).float().view(-1)
        feats = encoder(image) + self.time((days / self.days_scale).unsqueeze(1))
        m = present.unsqueeze(1).to(feats.dtype)
        return m * feats + (1 - m) * missing.to(feats.dtype)
