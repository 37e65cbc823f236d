"""Explanations of single predictions: Grad-CAM (MONAI) and Integrated Gradients (Captum) on the image,
Integrated Gradients per clinical variable, one PNG per patient; with a known tumour box, the share of
image attribution inside it (energy) and whether the attribution maximum falls in it (pointing game).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.analysis.tumour_box import Box, box_mask

#: Grad-CAM uses the deepest ResNet stage whose feature map is at least this many voxels along every axis.
GRADCAM_MIN_SIZE = 4
_STAGES = ("layer4", "layer3", "layer2", "layer1")


@dataclass(frozen=True)
class ExplainConfig:
    """Integrated-Gradients path and pointing-game tolerance.

    The image baseline is the image Gaussian-blurred by ``ig_baseline_sigma`` voxels, not zeros: the
    encoder's first conv + GroupNorm make the network invariant to the image's scale, so on the path
    from a zero image the output is flat except at the origin and IG would not be complete (sum of
    attributions != f(x) - f(baseline)). The blurred baseline keeps the coarse anatomy and asks what
    the fine structure (the tumour) adds. The clinical baseline is the encoded reference value 0
    (age 50, grade 2, T2, N1, binary variables 0).
    """

    #: 64 Gauss-Legendre steps: at 32 the completeness gap of a small fusion model reached 150 % on some
    #: patients (measured); each row of explanations.csv records Captum's convergence delta.
    ig_steps: int = 64
    ig_batch: int = 16
    ig_baseline_sigma: float = 4.0
    gradcam_min_size: int = GRADCAM_MIN_SIZE
    pointing_tolerance: int = 0


@dataclass
class Explanation:
    """Maps of one patient: Grad-CAM (Z,Y,X), image IG (C,Z,Y,X), clinical IG per variable, the score."""

    patient_id: str
    score: float
    gradcam: np.ndarray | None
    ig_image: np.ndarray | None
    ig_clinical: pd.Series | None
    gradcam_layer: str
    gradcam_class: str = ""  # the class Grad-CAM explains: the predicted one at the operating threshold
    ig_delta: float = float("nan")  # Captum convergence delta: sum of attributions - (f(x) - f(baseline))


class _LogitOf(nn.Module):
    """Tensor-in wrapper of the fusion model (attribution libraries call ``f(image[, clinical])``):
    returns the pCR logit as (N, 1), or (N, 2) class logits ``[-logit, logit]`` (no pCR, pCR) with
    ``two_class`` so Grad-CAM can explain either class; inputs not passed are the patient's own, fixed."""

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, image: torch.Tensor | None = None, clinical: torch.Tensor | None = None,
                two_class: bool = False) -> torch.Tensor:
        n = (image if image is not None else clinical).shape[0]
        b = {k: v.expand(n, *v.shape[1:]) for k, v in self.batch.items()}
        if image is not None:
            b["image"] = image
        if clinical is not None:
            b["clinical"] = clinical
        logit = self.model(b)["logit"].unsqueeze(1)
        return torch.cat([-logit, logit], dim=1) if two_class else logit


def gradcam_layer(model: nn.Module, image: torch.Tensor, min_size: int = GRADCAM_MIN_SIZE) -> str:
    """Name (in the fusion model) of the deepest image-encoder stage with a map >= ``min_size`` per axis."""
    sizes: dict[str, tuple[int, ...]] = {}
    trunk = model.image_encoder.trunk  # type: ignore[union-attr]
    hooks = [getattr(trunk, s).register_forward_hook(lambda m, i, o, s=s: sizes.__setitem__(s, tuple(o.shape[2:])))
             for s in _STAGES]
    try:
        with torch.no_grad():
            trunk(image[:, :1] if model.image_encoder.branch_per_phase else image)  # type: ignore[union-attr]
    finally:
        for h in hooks:
            h.remove()
    for s in _STAGES:
        if min(sizes[s]) >= min_size:
            return f"model.image_encoder.trunk.{s}"
    return "model.image_encoder.trunk.layer1"


def blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, Z, Y, X) image Gaussian-smoothed over its spatial axes (scipy.ndimage), the IG image baseline."""
    from scipy.ndimage import gaussian_filter

    arr = gaussian_filter(image.detach().cpu().numpy(), sigma=(0, 0, sigma, sigma, sigma), mode="nearest")
    return torch.as_tensor(arr, dtype=image.dtype, device=image.device)


def explain_one(model: nn.Module, item: dict[str, Any], patient_id: str, cfg: ExplainConfig = ExplainConfig(),
                threshold: float = 0.5) -> Explanation:
    """Grad-CAM of the predicted class (score >= ``threshold``: pCR) and Integrated Gradients of the pCR logit
    for one dataset item (``PCRDataset`` dict)."""
    from captum.attr import IntegratedGradients
    from monai.visualize import GradCAM

    model.eval()
    device = next(model.parameters()).device
    batch = {k: torch.as_tensor(item[k]).unsqueeze(0).float().to(device)
             for k in ("image", "clinical", "clinical_present") if k in item}
    wrapper = _LogitOf(model, batch).eval()
    with torch.no_grad():
        score = float(torch.sigmoid(wrapper(batch["image"])).item())
    has_image = getattr(model, "image_encoder", None) is not None
    has_clin = getattr(model, "clinical_encoder", None) is not None
    cam_map, ig_img, ig_clin, layer = None, None, None, ""
    predicted = int(score >= threshold)
    if has_image:
        layer = gradcam_layer(model, batch["image"], cfg.gradcam_min_size)
        cam = GradCAM(nn_module=wrapper, target_layers=layer, postprocessing=lambda x: x)
        cam_map = cam(x=batch["image"], class_idx=predicted, two_class=True).detach().cpu().numpy()[0, 0]
    inputs = tuple(batch[k] for k, use in (("image", has_image), ("clinical", has_clin)) if use)
    names = [k for k, use in (("image", has_image), ("clinical", has_clin)) if use]
    forward = (lambda *xs: wrapper(**dict(zip(names, xs))))
    ig = IntegratedGradients(forward)
    baselines = tuple(blurred(x, cfg.ig_baseline_sigma) if k == "image" else torch.zeros_like(x)
                      for k, x in zip(names, inputs))
    attr, delta = ig.attribute(inputs, baselines=baselines, target=0, n_steps=cfg.ig_steps,
                               internal_batch_size=cfg.ig_batch, return_convergence_delta=True)
    attr = dict(zip(names, (a.detach().cpu().numpy()[0] for a in attr)))
    if has_image:
        ig_img = attr["image"]
    if has_clin:
        ig_clin = pd.Series(attr["clinical"], index=list(model.cfg.clinical_features))  # type: ignore[union-attr]
    return Explanation(patient_id, score, cam_map, ig_img, ig_clin, layer, ("no pCR", "pCR")[predicted],
                       float(delta.item()))


def localisation(exp: Explanation, box: Box, tolerance: int = 0) -> dict[str, float]:
    """Share of attribution inside the box (Grad-CAM map; |IG| summed over channels), pointing-game hits
    (argmax inside the box grown by ``tolerance`` voxels) and the box's volume share (chance level).
    An all-zero map (Grad-CAM is ReLU'd) scores NaN, not a miss."""
    out: dict[str, float] = {}
    shape = None
    for name, m in (("gradcam", exp.gradcam), ("ig", None if exp.ig_image is None else np.abs(exp.ig_image).sum(0))):
        if m is None:
            continue
        shape = m.shape
        inside = box_mask(m.shape, box)
        total = float(m.sum())
        if not total > 0:
            out[f"{name}_energy_in_box"] = out[f"{name}_pointing_hit"] = float("nan")
            continue
        out[f"{name}_energy_in_box"] = float(m[inside].sum() / total)
        grown = tuple(max(v - tolerance, 0) if k % 2 == 0 else v + tolerance for k, v in enumerate(box))
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        out[f"{name}_pointing_hit"] = float(box_mask(m.shape, grown)[peak])  # type: ignore[arg-type]
    if shape is not None:
        out["box_volume_share"] = float(box_mask(shape, box).mean())
    return out


def _slices(image: np.ndarray, channels: tuple[str, ...]) -> tuple[int, int]:
    """Indices of the pre-contrast and subtraction channels (post1 - pre computed by the caller if absent)."""
    pre = channels.index("pre") if "pre" in channels else 0
    sub = next((k for k, c in enumerate(channels) if c.startswith("sub")), image.shape[0] - 1)
    return pre, sub


def write_panel(path: Path, exp: Explanation, image: np.ndarray, channels: tuple[str, ...], *, label: float | None,
                box: Box | None = None) -> Path:
    """PNG of one patient: slice through the tumour (box centre, else the volume centre = the tumour-box
    crop's centre) of pre-contrast and subtraction with Grad-CAM and |IG| overlays, plus clinical IG bars."""
    from common.analysis.plots import plot_explanation

    zc = (box[0] + box[1]) // 2 if box is not None else image.shape[1] // 2
    pre, sub = _slices(image, channels)
    cam = exp.gradcam[zc] if exp.gradcam is not None else np.zeros(image.shape[2:])
    ig = exp.ig_image if exp.ig_image is not None else np.zeros_like(image)
    what = "unknown" if label is None or np.isnan(label) else ("pCR" if label == 1 else "no pCR")
    return plot_explanation(path, pre=image[pre, zc], sub=image[sub, zc], gradcam=cam, ig=ig[pre, zc],
                            ig_sub=ig[sub, zc], clinical=exp.ig_clinical,
                            title=f"{exp.patient_id}: score {exp.score:.3f}, outcome {what}; slice z={zc}; "
                                  f"Grad-CAM of '{exp.gradcam_class}' at {exp.gradcam_layer.split('.')[-1]}",
                            box=None if box is None else box[2:])


__all__ = ["ExplainConfig", "Explanation", "GRADCAM_MIN_SIZE", "blurred", "explain_one", "gradcam_layer", "localisation",
           "write_panel"]
