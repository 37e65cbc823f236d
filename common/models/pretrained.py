"""Load MedicalNet-layout 3D ResNet weights (local file only) into the image encoder's MONAI trunk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: Checkpoint keys that belong to MedicalNet's segmentation head, not the encoder.
IGNORED_PREFIXES = ("conv_seg.", "fc.")


def read_medicalnet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a MedicalNet checkpoint (``{"state_dict": ...}`` or a bare state_dict), strip ``module.``."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"pretrained weights {path}: cannot read ({exc})") from exc
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {path}: expected a state_dict of tensors "
                         "(MedicalNet layout: {'state_dict': {'module.conv1.weight': ...}})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit a (out, c, k, k, k) first-conv kernel to ``in_channels``: average then repeat, preserving the
    response to an input replicated over channels."""
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1, 1) * (weight.shape[1] / in_channels)


def load_medicalnet(trunk: nn.Module, path: str | Path) -> list[str]:
    """Copy matching MedicalNet weights into ``trunk`` (a MONAI ResNet); returns the loaded keys.

    Every trunk parameter must be found with the right shape (except BN running statistics when the
    trunk uses another norm type), otherwise a ValueError names the file and the offending keys.
    """
    path = Path(path)
    source = {k: v for k, v in read_medicalnet_state(path).items() if not k.startswith(IGNORED_PREFIXES)}
    target = trunk.state_dict()
    if "conv1.weight" in source and "conv1.weight" in target:
        source["conv1.weight"] = adapt_first_conv(source["conv1.weight"], target["conv1.weight"].shape[1])
    new_state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for key, value in target.items():
        if key not in source and key.endswith("num_batches_tracked"):
            new_state[key] = value  # old checkpoints predate this counter
        elif key not in source:
            missing.append(key)
        elif tuple(source[key].shape) != tuple(value.shape):
            mismatched.append(f"{key}: file {tuple(source[key].shape)} vs model {tuple(value.shape)}")
        else:
            new_state[key] = source[key].to(value.dtype)
    if mismatched or missing:
        lines = [f"pretrained weights {path} do not fit the image encoder "
                 "(check ModelConfig depth/width/branch_per_phase):"]
        if mismatched:
            lines.append("  shape mismatch: " + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else ""))
        if missing:
            lines.append("  missing keys: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        raise ValueError("\n".join(lines))
    trunk.load_state_dict(new_state, strict=True)
    # keys only present in the file (e.g. BN running stats for a GroupNorm trunk) are ignored on purpose
    return sorted(new_state)
