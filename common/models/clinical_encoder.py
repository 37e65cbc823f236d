"""Tabular encoder (MRP-style): per-variable linear + ELU on [value, present], then a 2-layer MLP."""

from __future__ import annotations

import torch
from torch import nn

from common.models.config import ModelConfig

#: Size of each variable's embedding.
VARIABLE_EMBEDDING = 8


class ClinicalEncoder(nn.Module):
    """Encodes (values, present) of shape (N, F) into (N, clinical_hidden); missing values are indicated,
    never imputed, so the network learns what absence means."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n_feat = len(cfg.clinical_features)
        self.n_features = n_feat
        # one independent Linear(2 -> d) per variable, stored as a batched weight
        self.var_weight = nn.Parameter(torch.empty(n_feat, 2, VARIABLE_EMBEDDING))
        self.var_bias = nn.Parameter(torch.zeros(n_feat, VARIABLE_EMBEDDING))
        nn.init.xavier_uniform_(self.var_weight.view(n_feat * 2, VARIABLE_EMBEDDING))
        self.mlp = nn.Sequential(
            nn.Linear(n_feat * VARIABLE_EMBEDDING, cfg.clinical_hidden),
            nn.ELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.clinical_hidden, cfg.clinical_hidden),
            nn.ELU(),
        )
        self.out_features = cfg.clinical_hidden

    def forward(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if values.shape != present.shape or values.shape[-1] != self.n_features:
            raise ValueError(f"clinical values/present must both be (N, {self.n_features}), "
                             f"got {tuple(values.shape)} and {tuple(present.shape)}")
        x = torch.stack([values * present, present], dim=-1)  # (N, F, 2)
        emb = nn.functional.elu(torch.einsum("nfi,fid->nfd", x, self.var_weight) + self.var_bias)
        return self.mlp(emb.flatten(1))
