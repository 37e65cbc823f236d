"""Model config and presets (``small`` for CPU/tests/simulation, ``paper`` for GPU)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.hashing import stable_hash
from common.schema import MODEL_CLINICAL_FEATURES


@dataclass(frozen=True)
class ModelConfig:
    """Image + clinical fusion model. ``in_channels`` must match the preprocessing channels."""

    preset: str = "small"
    use_image: bool = True
    use_clinical: bool = True
    in_channels: int = 3
    #: MONAI ResNet depth: 10, 18, 34 or 50.
    depth: int = 10
    #: Channels of the first ResNet stage; later stages double it (MONAI block_inplanes).
    width: int = 8
    #: "group" | "instance" | "batch". Group/instance norm are safe for federation and DP-SGD.
    norm: str = "group"
    #: One encoder branch per input channel with shared weights (Braman / MRP), features concatenated.
    branch_per_phase: bool = False
    image_features: int = 32
    clinical_features: tuple[str, ...] = MODEL_CLINICAL_FEATURES
    clinical_hidden: int = 32
    fusion_hidden: int = 32
    dropout: float = 0.1
    #: Probability of dropping each modality for a sample during training (missing-modality robustness).
    modality_dropout: float = 0.2
    #: Auxiliary head predicting ER, PR, HER2 from image features alone (MRP's cross-modal knowledge).
    aux_receptor_head: bool = True
    #: Optional MedicalNet-layout weights file for the image encoder (local path, never downloaded).
    pretrained_path: str | None = None
    #: Imaging visits the model reads: ``("pre",)`` = pre-treatment only; ``("pre", "early")`` adds the
    #: early-treatment MRI through the SAME image encoder plus a time embedding of days since baseline
    #: (MRP's design). A later visit missing for a patient is replaced by a learned embedding.
    visits: tuple[str, ...] = ("pre",)
    #: Days since baseline are divided by this before the time embedding (~3 weeks -> ~0.2).
    visit_days_scale: float = 100.0

    def __post_init__(self) -> None:
        if not self.visits or self.visits[0] != "pre" or len(set(self.visits)) != len(self.visits):
            raise ValueError(f"ModelConfig.visits must start with 'pre' and name each visit once, got {self.visits!r}")

    def hash(self) -> str:
        return stable_hash(self)


PRESETS: dict[str, ModelConfig] = {
    "small": ModelConfig(),
    "paper": ModelConfig(preset="paper", depth=18, width=64, image_features=256, clinical_hidden=256,
                         fusion_hidden=128, norm="group"),
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """A named preset with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)  # type: ignore[arg-type]
