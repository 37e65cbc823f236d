"""Image encoders, clinical encoder and the fusion model, built from a ModelConfig.

torch is imported lazily (on first use of build_model / FusionModel / MODALITIES), so that
``common.models.config`` (ModelConfig and its hash) can be used without loading torch: a hospital
checks the model hash before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.models.config import PRESETS, ModelConfig, preset

if TYPE_CHECKING:
    from torch import nn

    from common.models.fusion import MODALITIES, FusionModel


def build_model(cfg: ModelConfig) -> "nn.Module":
    """Build the fusion model for ``cfg`` (loading local MedicalNet weights into the image trunk if set)."""
    from common.models.fusion import FusionModel

    model = FusionModel(cfg)
    if cfg.pretrained_path and model.image_encoder is not None:
        from common.models.pretrained import load_medicalnet

        load_medicalnet(model.image_encoder.trunk, cfg.pretrained_path)
    return model


def __getattr__(name: str) -> Any:
    """Lazy ``MODALITIES`` / ``FusionModel`` (they import torch)."""
    if name in ("MODALITIES", "FusionModel"):
        from common.models import fusion

        return getattr(fusion, name)
    raise AttributeError(f"module 'common.models' has no attribute {name!r}")


__all__ = ["MODALITIES", "PRESETS", "FusionModel", "ModelConfig", "build_model", "preset"]
