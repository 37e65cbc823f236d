"""Image encoders, clinical encoder and the fusion model, built from a ModelConfig."""

from __future__ import annotations

from torch import nn

from common.models.config import PRESETS, ModelConfig, preset
from common.models.fusion import MODALITIES, FusionModel


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the fusion model for ``cfg`` (loading local MedicalNet weights into the image trunk if set)."""
    model = FusionModel(cfg)
    if cfg.pretrained_path and model.image_encoder is not None:
        from common.models.pretrained import load_medicalnet

        load_medicalnet(model.image_encoder.trunk, cfg.pretrained_path)
    return model


__all__ = ["MODALITIES", "PRESETS", "FusionModel", "ModelConfig", "build_model", "preset"]
