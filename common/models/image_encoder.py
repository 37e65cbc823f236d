"""3D image encoder: MONAI ResNet (depth 10/18/34/50) with a selectable norm layer, -> feature vector."""

from __future__ import annotations

import math

import torch
from monai.networks.nets import ResNet
from torch import nn

from common.models.config import ModelConfig

#: depth -> (MONAI block type, layers per stage), as in MedicalNet / MONAI ``resnet_params``.
RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}
NORMS = ("batch", "instance", "group")
#: Total stride of the trunk: conv1 (2) x max-pool (2) x stages 2-4 (2 each).
DOWNSAMPLING = 32


def _group_count(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` that is <= ``max_groups`` (GroupNorm needs an exact division)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def make_norm(norm: str, channels: int) -> nn.Module:
    """A norm layer for 3D feature maps with learnable affine parameters (so MedicalNet BN weights/biases map onto it)."""
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        # GroupNorm with one channel per group computes exactly InstanceNorm3d(affine=True) but, unlike
        # torch's InstanceNorm, accepts the 1-voxel last stage a 32^3 input reaches.
        return nn.GroupNorm(channels, channels)
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    raise ValueError(f"unknown norm {norm!r}; known: {NORMS}")


def replace_batchnorm(module: nn.Module, norm: str) -> nn.Module:
    """Swap every BatchNorm3d under ``module`` for ``norm`` in place.

    MONAI 1.6 ``ResNet._make_layer`` ignores its ``norm`` argument (blocks and shortcuts always get
    BatchNorm), so the norm type is applied after construction.
    """
    if norm == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, make_norm(norm, child.num_features))
        else:
            replace_batchnorm(child, norm)
    return module


def build_resnet(depth: int, width: int, in_channels: int, norm: str) -> ResNet:
    """MONAI 3D ResNet trunk without classifier (``feed_forward=False``): output (N, planes*expansion)."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth}; known: {sorted(RESNET_LAYOUTS)}")
    block, layers = RESNET_LAYOUTS[depth]
    net = ResNet(
        block=block,
        layers=layers,
        block_inplanes=[width, 2 * width, 4 * width, 8 * width],
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,  # MedicalNet layout (MONAI resnet_params for the 23-dataset weights)
        feed_forward=False,
    )
    return replace_batchnorm(net, norm)


def resnet_out_features(depth: int, width: int) -> int:
    """Feature size of the pooled ResNet trunk."""
    expansion = 4 if RESNET_LAYOUTS[depth][0] == "bottleneck" else 1
    return 8 * width * expansion


class ImageEncoder(nn.Module):
    """ResNet trunk -> linear to ``image_features``; or one shared-weight branch per channel, concatenated."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.branch_per_phase = cfg.branch_per_phase
        self.in_channels = cfg.in_channels
        self.norm = cfg.norm
        trunk_in = 1 if cfg.branch_per_phase else cfg.in_channels
        self.trunk = build_resnet(cfg.depth, cfg.width, trunk_in, cfg.norm)
        n_trunk = resnet_out_features(cfg.depth, cfg.width)
        n_branches = cfg.in_channels if cfg.branch_per_phase else 1
        self.proj = nn.Linear(n_trunk * n_branches, cfg.image_features)
        self.out_features = cfg.image_features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must be (N, {self.in_channels}, Z, Y, X), got {tuple(image.shape)}")
        if self.norm == "instance" and all(math.ceil(d / DOWNSAMPLING) <= 1 for d in image.shape[2:]):
            raise ValueError(f"instance norm needs inputs larger than {DOWNSAMPLING} voxels along some axis "
                             f"(got {tuple(image.shape[2:])}): the last ResNet stage would hold one voxel and "
                             "instance-normalise every feature to a constant; use norm 'group' or 'batch'")
        if self.branch_per_phase:
            n, c = image.shape[:2]
            feats = self.trunk(image.reshape(n * c, 1, *image.shape[2:]))  # shared weights over channels
            feats = feats.reshape(n, -1)
        else:
            feats = self.trunk(image)
        return torch.relu(self.proj(feats))

