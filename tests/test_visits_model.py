"""Fusion model with a second (early-treatment) visit: shared image encoder, time embedding, masking."""

from __future__ import annotations

import pytest
import torch

from common.models import build_model
from common.models.config import ModelConfig, preset

SHAPE = (2, 3, 16, 16, 16)


def _batch(n: int = 4, present: list[float] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig()
    return {"image": torch.randn(n, *SHAPE[1:], generator=g),
            "clinical": torch.randn(n, len(cfg.clinical_features), generator=g),
            "clinical_present": torch.ones(n, len(cfg.clinical_features)),
            "image_early": torch.randn(n, *SHAPE[1:], generator=g),
            "early_present": torch.tensor(present if present is not None else [1.0, 0.0, 1.0, 0.0]),
            "early_days": torch.tensor([21.0, 0.0, 35.0, 0.0])}


def _model(visits: tuple[str, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(preset("small", visits=visits, modality_dropout=0.0))
    return model.eval()


def test_pre_only_model_is_unchanged_by_the_visit_option() -> None:
    """The default keeps the same parameters (old bundles load) and ignores early-visit keys."""
    model = _model(("pre",))
    assert not any("later_visits" in k for k in model.state_dict())
    batch = _batch()
    with torch.no_grad():
        a = model(batch)["logit"]
        b = model({k: v for k, v in batch.items() if not k.startswith(("image_early", "early_"))})["logit"]
    assert torch.equal(a, b)


def test_second_visit_shares_the_encoder_and_masks_missing_visits() -> None:
    pre, two = _model(("pre",)), _model(("pre", "early"))
    n_enc = sum(p.numel() for p in pre.image_encoder.parameters())
    assert sum(p.numel() for p in two.image_encoder.parameters()) == n_enc  # one encoder, shared weights
    extra = {k for k in two.state_dict() if k not in pre.state_dict()}
    assert extra and all(k.startswith("later_visits.early.") or k.startswith("head.") for k in extra) or \
        all(k.startswith("later_visits.early.") for k in extra)
    batch = _batch()
    changed = dict(batch, image_early=batch["image_early"] + 5.0)
    later_days = dict(batch, early_days=batch["early_days"] + 60.0)
    with torch.no_grad():
        base, img, days = two(batch)["logit"], two(changed)["logit"], two(later_days)["logit"]
    assert torch.isfinite(base).all()
    present = batch["early_present"].bool()
    assert torch.equal(base[~present], img[~present])  # a missing visit's pixels are never read
    assert torch.equal(base[~present], days[~present])
    assert not torch.allclose(base[present], img[present])  # a present visit changes the prediction
    assert not torch.allclose(base[present], days[present])  # and so does its time since baseline


def test_visit_without_early_keys_and_gradients_reach_the_time_embedding() -> None:
    model = _model(("pre", "early")).train()
    batch = _batch(present=[1.0, 1.0, 0.0, 0.0])
    out = model(batch)["logit"]
    out.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("later_visits.early.time")]
    assert grads and all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    pre_only = {k: v for k, v in batch.items() if not k.startswith(("image_early", "early_"))}
    with torch.no_grad():
        assert torch.isfinite(model.eval()(pre_only)["logit"]).all()  # patients with no early visit at all


@pytest.mark.parametrize("visits", [("early",), ("pre", "pre"), ()])
def test_bad_visit_lists_are_refused(visits: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="visits"):
        ModelConfig(visits=visits)
