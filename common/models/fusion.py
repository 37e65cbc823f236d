"""Fusion model: image and clinical encoders, modality masks, modality dropout, optional receptor head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.models.clinical_encoder import ClinicalEncoder
from common.models.config import ModelConfig
from common.models.image_encoder import ImageEncoder
from common.models.visits import VisitEmbedding
from common.schema import RECEPTOR_TARGETS

#: Column order of a modality mask (N, 2): 1 = modality present for that sample.
MODALITIES = ("image", "clinical")


class FusionModel(nn.Module):
    """Concatenate per-modality embeddings -> MLP -> pCR logit.

    A missing or dropped modality is replaced by a learned "missing" embedding, so every combination
    of inputs works at training and inference time.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not (cfg.use_image or cfg.use_clinical):
            raise ValueError("ModelConfig needs use_image or use_clinical")
        self.cfg = cfg
        dims: list[int] = []
        self.image_encoder: ImageEncoder | None = None
        self.clinical_encoder: ClinicalEncoder | None = None
        self.aux_head: nn.Linear | None = None
        if cfg.use_image:
            self.image_encoder = ImageEncoder(cfg)
            self.missing_image = nn.Parameter(torch.zeros(cfg.image_features))
            dims.append(cfg.image_features)
            self.later_visits = nn.ModuleDict({v: VisitEmbedding(cfg.image_features, cfg.visit_days_scale)
                                               for v in cfg.visits[1:]})
            dims += [cfg.image_features] * len(self.later_visits)
            if cfg.aux_receptor_head:
                self.aux_head = nn.Linear(cfg.image_features, len(RECEPTOR_TARGETS))
        if cfg.use_clinical:
            self.clinical_encoder = ClinicalEncoder(cfg)
            self.missing_clinical = nn.Parameter(torch.zeros(cfg.clinical_hidden))
            dims.append(cfg.clinical_hidden)
        self.head = nn.Sequential(
            nn.Linear(sum(dims), cfg.fusion_hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fusion_hidden, 1),
        )

    def _batch_size(self, batch: dict[str, Any]) -> int:
        for key in ("image", "clinical", "label"):
            value = batch.get(key)
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
        raise ValueError("batch holds neither 'image' nor 'clinical'")

    def modality_mask(self, batch: dict[str, Any], modality_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2) float mask of available inputs: model uses it, the batch has it, and the caller allows it."""
        n = self._batch_size(batch)
        device = next(self.parameters()).device
        mask = torch.zeros(n, 2, device=device)
        if self.image_encoder is not None and isinstance(batch.get("image"), torch.Tensor):
            present = batch.get("image_present")
            mask[:, 0] = 1.0 if present is None else present.to(device).float().view(-1)
        if self.clinical_encoder is not None and isinstance(batch.get("clinical"), torch.Tensor):
            present = batch.get("clinical_present")
            mask[:, 1] = 1.0 if present is None else (present.to(device).sum(dim=1) > 0).float()
        if modality_mask is not None:
            mask = mask * modality_mask.to(device).float().view(n, 2)
        return mask

    def _modality_dropout(self, mask: torch.Tensor) -> torch.Tensor:
        p = self.cfg.modality_dropout
        if not self.training or p <= 0:
            return mask
        keep = (torch.rand(mask.shape, device=mask.device) >= p).float()
        dropped = mask * keep
        # never drop every available modality of a sample: keep one of its inputs, chosen at random
        empty = (dropped.sum(dim=1) == 0) & (mask.sum(dim=1) > 0)
        if empty.any():
            pick = torch.rand(mask.shape, device=mask.device) * mask  # random score per available modality
            keep_one = nn.functional.one_hot(pick.argmax(dim=1), mask.shape[1]).to(mask.dtype)
            dropped[empty] = keep_one[empty]
        return dropped

    def forward(self, batch: dict[str, Any], modality_mask: torch.Tensor | None = None) -> dict[str, Any]:
        mask = self._modality_dropout(self.modality_mask(batch, modality_mask))
        parts: list[torch.Tensor] = []
        aux = None
        n = mask.shape[0]
        if self.image_encoder is not None:
            missing = self.missing_image.unsqueeze(0).expand(n, -1)
            if mask[:, 0].any():
                feats = self.image_encoder(batch["image"])
                if self.aux_head is not None:
                    aux = self.aux_head(feats)
                m = mask[:, :1].to(feats.dtype)
                parts.append(m * feats + (1 - m) * missing.to(feats.dtype))
            else:
                parts.append(missing)
            for visit, embed in self.later_visits.items():  # each later visit through the same encoder
                later = embed(self.image_encoder, batch, visit, n)
                parts.append(later * mask[:, :1].to(later.dtype) + embed.missing * (1 - mask[:, :1].to(later.dtype)))
        if self.clinical_encoder is not None:
            missing = self.missing_clinical.unsqueeze(0).expand(n, -1)
            if mask[:, 1].any():
                present = batch.get("clinical_present")
                if present is None:
                    present = torch.ones_like(batch["clinical"])
                feats = self.clinical_encoder(batch["clinical"], present)
                m = mask[:, 1:2].to(feats.dtype)
                parts.append(m * feats + (1 - m) * missing.to(feats.dtype))
            else:
                parts.append(missing)
        fused = torch.cat([p.float() for p in parts], dim=1) if len(parts) > 1 else parts[0]
        logit = self.head(fused).squeeze(1)
        return {"logit": logit, "aux": aux, "modality_mask": mask}
