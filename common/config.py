"""Plain dataclass configs for preprocessing and training: the one place each default is decided.

Every config loads from a dict (Flower run config, YAML file, CLI) with :func:`from_dict`, which
rejects unknown keys by name, and hashes stably with ``.hash()``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from common.hashing import stable_hash

T = TypeVar("T")

#: Tumour localisation methods (PrepConfig.localisation) and the version of the automatic one; both enter
#: the prep hash (common.preprocess.localise implements them).
LOCALISATIONS = ("annotation_or_auto", "annotation", "auto")
AUTO_LOCALISATION = "enhancement-v1"

#: Names a model input channel may have. DCE phases are named by acquisition order.
#: ``subK`` = postK - pre (subtraction image); ``t2`` = T2-weighted series resampled onto the DCE grid.
PHASE_NAMES = ("pre", "post1", "post2", "post3", "post4", "post5", "post6", "post7", "post8", "post9", "post10")


@dataclass(frozen=True)
class PrepConfig:
    """Harmonised preprocessing, applied identically at every site. Its hash travels with every round."""

    #: Model input channels, in this order, stacked on axis 0 of every cached volume.
    channels: tuple[str, ...] = ("pre", "post1", "sub1")
    #: Isotropic output spacing in mm (the ``paper`` preset uses 1.0).
    spacing_mm: float = 2.0
    #: Output array shape (z, y, x) after crop/pad, in voxels of ``spacing_mm``.
    shape: tuple[int, int, int] = (32, 32, 32)
    #: "tumour": crop centred on the tumour box (see ``localisation``);
    #: "breast": whole bilateral breast volume, centred on the body mask, cropped/padded to ``shape``.
    crop: str = "tumour"
    #: Where the tumour box comes from (crop="tumour"): "annotation_or_auto" = the patient's annotation
    #: (box table, NIfTI mask, DICOM-SEG) else the automatic localisation; "annotation" = annotation
    #: required (patients without one are skipped); "auto" = automatic for every patient, annotations
    #: ignored (identical crops at every site). See docs/preprocessing.md "Tumour localisation".
    localisation: str = "annotation_or_auto"
    #: Version of the automatic localisation (the code's ``AUTO_LOCALISATION``; another value is refused):
    #: a field so that the prep hash changes when the method does.
    auto_localisation: str = AUTO_LOCALISATION
    #: Orientation every volume is reoriented to (SimpleITK DICOMOrient code).
    orientation: str = "LPS"
    #: N4 bias-field correction of the pre-contrast phase (field applied to all phases).
    n4: bool = False
    #: Intensity standardisation: percentile clip then z-score inside the body mask, using the
    #: pre-contrast phase's statistics for all DCE channels (keeps enhancement comparable).
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    standardise: str = "zscore_body"
    #: Resampling interpolator: "linear" or "bspline".
    interpolator: str = "linear"
    #: Which visit to use when several exist: "pre" = earliest (pre-treatment).
    visit: str = "pre"
    #: Visits cached per patient: ``("pre",)`` = the baseline only; ``("pre", "early")`` also caches the
    #: early-treatment visit (next StudyDate with a DCE) as a second volume, same preprocessing, cropped
    #: around the baseline's tumour centre. A patient without the later visit is kept (recorded).
    visits: tuple[str, ...] = ("pre",)

    def hash(self) -> str:
        """Stable hash; ``visits`` enters it only when it differs from the default (so caches prepared
        before the field existed keep their hash)."""
        data = dataclasses.asdict(self)
        if tuple(data["visits"]) == ("pre",):
            del data["visits"]
        return stable_hash(data)


@dataclass(frozen=True)
class TrainConfig:
    """Local training loop settings shared by local-only, pooled and federated training."""

    #: Defaults measured on the prepared embedded cohort (docs/experiments.md, "Training defaults").
    epochs: int = 40
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-5
    optimizer: str = "adamw"  # "adamw" | "radam"
    #: "constant" | "cosine" (per epoch over ``epochs``): centralised fit only; a federated train-config refuses it.
    lr_schedule: str = "constant"
    loss: str = "weighted_bce"  # "weighted_bce" (n_neg/n_pos from training labels) | "focal" | "bce"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    aux_weight: float = 0.3  # weight of the auxiliary receptor-status loss (if the model has the head)
    augment: bool = True
    patience: int = 12  # early stopping on validation AUROC, in epochs (small validation sets are noisy)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    prox_mu: float = 0.0  # FedProx proximal term weight (0 = off)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: bool = True  # mixed precision, CUDA only
    num_workers: int = 0  # DataLoader workers (use >0 on GPU machines)
    threshold_rule: str = "youden"  # operating point on validation data: "youden" | "weighted_youden"
    youden_weight: float = 0.5  # w in max(w*sens + (1-w)*spec - 1); 0.5 = Youden

    #: Allowed values of the string-valued fields, checked when the config is built so a typo in a YAML
    #: file or a federated ``train-config`` fails at once, naming the field, not later inside training.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "optimizer": ("adamw", "radam"),
        "lr_schedule": ("constant", "cosine"),
        "loss": ("weighted_bce", "focal", "bce"),
        "threshold_rule": ("youden", "weighted_youden"),
    }

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name}: unknown value {value!r}; use one of {', '.join(allowed)}")
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ValueError(f"TrainConfig.device: unknown value {self.device!r}; use auto, cpu, cuda or cuda:N")

    def hash(self) -> str:
        return stable_hash(self)

    def threshold_weight(self) -> float:
        """The w of max(w*sens + (1-w)*spec) that ``threshold_rule`` means: 0.5 for "youden", ``youden_weight``
        for "weighted_youden". The one rule for centralised fits and federated (summed-count) thresholds."""
        return 0.5 if self.threshold_rule == "youden" else float(self.youden_weight)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` (missing keys keep defaults; lists become tuples).

    Unknown keys raise ``ValueError`` naming the key and ``source`` so a typo never goes silent.
    Keys may use ``-`` or ``_``.
    """
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(f"{source}: unknown key {key!r} for {cls.__name__}; known: {sorted(names)}")
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a field's value refused by the config itself: say where it came from
        raise ValueError(f"{source}: {exc}") from None


def load_yaml(cls: type[T], path: str | Path | None) -> T:
    """Load ``cls`` from a YAML file (``None`` -> defaults)."""
    if path is None:
        return cls()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must hold a mapping, got {type(data).__name__}")
    return from_dict(cls, data, source=str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config dataclass (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


__all__ = ["AUTO_LOCALISATION", "LOCALISATIONS", "PHASE_NAMES", "PrepConfig", "TrainConfig", "from_dict", "load_yaml",
           "to_dict", "field"]
