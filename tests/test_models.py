"""Fusion model: every input combination, norm types, branch-per-phase, MedicalNet weights, norm keys."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.models import build_model, preset
from common.models.image_encoder import build_resnet, make_norm
from common.train import norm_param_keys

N, SHAPE = 4, (32, 32, 32)


def _batch(cfg, n=N, seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    f = len(cfg.clinical_features)
    present = (torch.rand(n, f, generator=g) > 0.3).float()
    present[1] = 0.0  # sample 1: no clinical value at all
    return {"image": torch.randn(n, cfg.in_channels, *shape, generator=g),
            "clinical": torch.randn(n, f, generator=g), "clinical_present": present}


@pytest.mark.parametrize("norm,branch", list(itertools.product(["batch", "instance", "group"], [False, True])))
def test_forward_every_missing_combination(norm, branch):
    torch.manual_seed(0)
    cfg = preset("small", norm=norm, branch_per_phase=branch, width=4)
    model = build_model(cfg).eval()
    # instance norm needs a last stage of > 1 voxel (64^3 -> 2^3); 32^3 is refused with a clear message
    b = _batch(cfg, shape=(64, 64, 64) if norm == "instance" else SHAPE)
    if norm == "instance":
        with pytest.raises(ValueError, match="instance norm"):
            model(_batch(cfg))
    with torch.no_grad():
        full = model(b)
        assert full["logit"].shape == (N,) and full["aux"].shape == (N, 3)
        assert torch.isfinite(full["logit"]).all()
        # sample 1 has no clinical values -> its clinical modality counts as missing
        assert full["modality_mask"][:, 1].tolist() == [1, 0, 1, 1]
        no_image = model({k: v for k, v in b.items() if k != "image"})
        assert no_image["aux"] is None and torch.isfinite(no_image["logit"]).all()
        no_clin = model({"image": b["image"]})
        assert torch.isfinite(no_clin["logit"]).all()
        # per-sample masks: a masked-out modality must not influence that sample's output
        mask = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.float32)
        out1 = model(b, mask)["logit"]
        b2 = dict(b, image=b["image"] + 5 * torch.randn_like(b["image"]), clinical=b["clinical"] + 3)
        out2 = model(b2, mask)["logit"]
    changed = (out1 - out2).abs() > 1e-5
    # sample 0 uses both (changes); 1 image only (image changed); 2 clinical only; 3 nothing (no change)
    assert changed.tolist() == [True, True, True, False]
    # a sample with image masked equals the model run without any image for that sample
    assert torch.allclose(out1[2], model({k: v for k, v in b.items() if k != "image"})["logit"][2], atol=1e-5)


def test_training_mode_modality_dropout_keeps_one_modality():
    torch.manual_seed(0)
    cfg = preset("small", width=4, modality_dropout=0.9)
    model = build_model(cfg).train()
    b = _batch(cfg, n=8)
    b["clinical_present"][1] = 1.0
    masks = torch.cat([model(b)["modality_mask"] for _ in range(5)])
    assert (masks.sum(dim=1) >= 1).all()  # never both dropped
    assert (masks.sum(dim=1) == 1).float().mean() > 0.5  # but one often is


@pytest.mark.parametrize("kind", ["image-only", "clinical-only"])
def test_single_modality_variants(kind):
    over = {"use_clinical": False} if kind == "image-only" else {"use_image": False, "aux_receptor_head": False}
    cfg = preset("small", width=4, **over)
    model = build_model(cfg).eval()
    out = model(_batch(cfg))
    assert out["logit"].shape == (N,)
    assert (model.image_encoder is None) == (kind == "clinical-only")
    assert (model.clinical_encoder is None) == (kind == "image-only")


def test_norm_type_is_applied_everywhere():
    # MONAI 1.6 ResNet._make_layer ignores `norm`; the encoder must still hold no BatchNorm
    for norm, typ in (("group", nn.GroupNorm), ("instance", nn.GroupNorm), ("batch", nn.BatchNorm3d)):
        trunk = build_resnet(18, 4, 3, norm)
        norms = [m for m in trunk.modules() if isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d))]
        assert norms and all(isinstance(m, typ) for m in norms)


def test_instance_norm_equals_torch_instance_norm():
    x = torch.randn(2, 6, 5, 6, 7)
    ours = make_norm("instance", 6)
    ref = nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.normal_()
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_clinical_value_ignored_when_marked_missing():
    cfg = preset("small", width=4)
    model = build_model(cfg).eval()
    enc = model.clinical_encoder
    v = torch.randn(2, len(cfg.clinical_features))
    p = torch.ones_like(v)
    p[:, 0] = 0
    v2 = v.clone()
    v2[:, 0] += 10
    assert torch.allclose(enc(v, p), enc(v2, p))
    assert not torch.allclose(enc(v, torch.ones_like(v)), enc(v2, torch.ones_like(v)))


def _medicalnet_file(tmp_path, depth=10, width=4, in_ch=1):
    src = build_resnet(depth, width, in_ch, "batch")
    with torch.no_grad():
        for v in src.state_dict().values():
            if v.is_floating_point():
                v.normal_()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.randn(2, 2, 1, 1, 1)  # segmentation head: ignored
    path = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": state}, path)
    return path, src


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_medicalnet_roundtrip(tmp_path, norm):
    path, src = _medicalnet_file(tmp_path)
    cfg = preset("small", width=4, in_channels=1, norm=norm, pretrained_path=str(path))
    trunk = build_model(cfg).image_encoder.trunk
    got = trunk.state_dict()
    for key, value in src.state_dict().items():
        if key in got:
            assert torch.equal(got[key], value), key
        else:  # only BN running statistics may be skipped, and only for a non-BN trunk
            assert norm != "batch" and key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")


def test_medicalnet_first_conv_adapted_to_channels(tmp_path):
    path, src = _medicalnet_file(tmp_path)
    cfg = preset("small", width=4, in_channels=3, pretrained_path=str(path))
    conv = build_model(cfg).image_encoder.trunk.conv1.weight
    assert conv.shape[1] == 3
    x = torch.randn(1, 1, 9, 9, 9)
    # an input replicated over the channels gives the pretrained single-channel response
    ref = F.conv3d(x, src.conv1.weight, padding=3)
    assert torch.allclose(F.conv3d(x.repeat(1, 3, 1, 1, 1), conv, padding=3), ref, atol=1e-4)


def test_medicalnet_mismatch_names_file(tmp_path):
    path, _ = _medicalnet_file(tmp_path, width=8)
    with pytest.raises(ValueError, match="resnet_10.pth"):
        build_model(preset("small", width=4, in_channels=1, pretrained_path=str(path)))
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_model(preset("small", width=4, pretrained_path=str(bad)))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_norm_param_keys_by_module_type(norm):
    model = build_model(preset("small", width=4, norm=norm))
    keys = norm_param_keys(model)
    norm_types = (nn.BatchNorm3d, nn.GroupNorm)
    expected = {f"{name}.{k}" for name, m in model.named_modules() if isinstance(m, norm_types)
                for k in m.state_dict()}
    assert keys == expected and keys
    assert any(".downsample.1." in k for k in keys)  # shortcut norms have no "bn" in their name
    assert not any("conv" in k for k in keys)
    assert all(isinstance(model.get_submodule(k.rsplit(".", 1)[0]), norm_types) for k in keys)
    if norm == "batch":
        assert any(k.endswith("running_mean") for k in keys)
