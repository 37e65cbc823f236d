"""DP-SGD (common/dp.py) and the site's accountant (client/privacy.py): validator, per-patient gradients,
RDP accounting against Opacus, budget refusal with spent/allowed epsilon, persistence across a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.policy import PrivacyPolicy
from client.privacy import SiteAccountant, plan_round, run_state_dir
from client.site import SiteRefusal
from common import dp
from common.models import build_model
from common.models.config import preset
from common.protocol import PRIVACY_BUDGET, RoundConfig


def test_batchnorm_model_refused_naming_the_layer() -> None:
    model = build_model(preset("small", norm="batch"))
    with pytest.raises(ValueError, match=r"image_encoder\..*BatchNorm3d"):
        dp.validate_model(model)
    dp.validate_model(build_model(preset("small")))  # the default GroupNorm model passes


def _clinical_batch(n: int, cfg) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f = len(cfg.clinical_features)
    return {"clinical": torch.randn(n, f, generator=g), "clinical_present": (torch.rand(n, f, generator=g) > 0.2).float(),
            "label": torch.tensor([0.0, 1.0] * (n // 2))}


def test_per_patient_gradients_equal_single_patient_backprop() -> None:
    """Opacus's per-sample gradients (incl. our ClinicalEncoder rule) = the gradient of each patient alone."""
    from opacus import GradSampleModule

    cfg = preset("small", use_image=False, dropout=0.0, modality_dropout=0.0)
    torch.manual_seed(0)
    model = dp.prepare_model(build_model(cfg))
    batch = _clinical_batch(4, cfg)
    gsm = GradSampleModule(model, loss_reduction="sum")
    loss = nn.functional.binary_cross_entropy_with_logits(gsm(batch)["logit"], batch["label"], reduction="sum")
    loss.backward()
    per = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad}
    gsm._close()
    for i in range(4):
        model.zero_grad()
        one = {k: v[i:i + 1] for k, v in batch.items()}
        nn.functional.binary_cross_entropy_with_logits(model(one)["logit"], one["label"], reduction="sum").backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per[name][i], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert {"clinical_encoder.var_weight", "clinical_encoder.var_bias"} <= set(per)


def test_epsilon_matches_opacus_accountant_and_grows() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(3):
        acc.step(noise_multiplier=1.1, sample_rate=0.25)
    assert dp.epsilon_of([(1.1, 0.25, 3)], 1e-5) == pytest.approx(acc.get_epsilon(1e-5, alphas=list(dp.ALPHAS)))
    assert dp.epsilon_of([(1.1, 0.25, 3)], 1e-5) >= acc.get_epsilon(1e-5) - 1e-9  # integer orders: conservative
    assert dp.epsilon_of([(1.1, 0.25, 6)], 1e-5) > dp.epsilon_of([(1.1, 0.25, 3)], 1e-5)
    noise = dp.calibrate_noise(3.0, 1e-5, 0.25, 40)
    assert dp.epsilon_of([(noise, 0.25, 40)], 1e-5) == pytest.approx(3.0, abs=0.05)


def test_coordinator_cannot_loosen_the_site_settings() -> None:
    policy = PrivacyPolicy(max_epsilon=2.0, delta=1e-6, max_grad_norm=0.5, min_noise_multiplier=1.5)
    rc = RoundConfig(dp=True, dp_epsilon=50.0, dp_delta=1e-2, dp_max_grad_norm=10.0, dp_noise_multiplier=0.1, dp_rounds=2)
    plan = plan_round(rc, policy, n_train=40, batch_size=8, epochs=1, planned_rounds=100)
    assert (plan.allowed_epsilon, plan.delta, plan.max_grad_norm) == (2.0, 1e-6, 0.5)
    assert plan.noise_multiplier >= 1.5
    assert dp.epsilon_of([(plan.noise_multiplier, plan.sample_rate, plan.steps * 2)], plan.delta) <= 2.0 + 1e-6
    # a stricter request is honoured
    strict = plan_round(rc.replace(dp_epsilon=0.5), policy, 40, 8, 1, 100)
    assert strict.allowed_epsilon == 0.5 and strict.noise_multiplier > plan.noise_multiplier
    assert plan_round(RoundConfig(), policy, 40, 8, 1, 100) is None
    assert plan_round(RoundConfig(), PrivacyPolicy(require_dp=True), 40, 8, 1, 100) is not None


def test_budget_refusal_names_spent_and_allowed_and_survives_restart(tmp_path: Path) -> None:
    policy = PrivacyPolicy(max_epsilon=3.0)
    rc = RoundConfig(dp=True, dp_rounds=2)
    plan = plan_round(rc, policy, n_train=24, batch_size=8, epochs=1, planned_rounds=2)
    state = run_state_dir({"state-dir": str(tmp_path / "st")}, str(tmp_path / "cache"), run_id=7)
    for _ in range(2):  # two planned rounds fit the budget
        acc = SiteAccountant(state)  # a fresh object each round = a restarted client reading its disk
        acc.check(plan, "SITEA")
        acc.record((plan.noise_multiplier, plan.sample_rate, plan.steps), plan)
    spent = SiteAccountant(state).spent(plan.delta)
    assert 2.5 < spent <= 3.0
    with pytest.raises(SiteRefusal, match=r"epsilon spent so far \d+\.\d+.*allowed 3\.000") as exc:
        SiteAccountant(state).check(plan, "SITEA")
    assert exc.value.code == PRIVACY_BUDGET
    other_run = run_state_dir({"state-dir": str(tmp_path / "st")}, str(tmp_path / "cache"), run_id=8)
    assert SiteAccountant(other_run).spent(plan.delta) == 0.0


def test_dp_training_changes_weights_and_is_refused_for_prox(tmp_path: Path) -> None:
    """One DP-SGD epoch on a tiny clinical model: weights move, the entry is what the accountant needs."""
    from common.config import TrainConfig
    from common.data import PCRDataset, load_cache
    from tests.cache_factory import make_cache

    cache = load_cache(make_cache(tmp_path, n=16, signal="clinical"))
    cfg = preset("small", use_image=False)
    ds = PCRDataset(cache, cache.labelled_ids(), clinical_features=cfg.clinical_features)
    torch.manual_seed(0)
    model = dp.prepare_model(build_model(cfg))
    before = [p.detach().clone() for p in model.parameters()]
    out = dp.train_epochs_dp(model, ds, TrainConfig(batch_size=4, device="cpu"), 1, noise_multiplier=1.0,
                             max_grad_norm=1.0, seed=3)
    assert out["entry"] == (1.0, 0.25, 4) and out["n"] == 16 and np.isfinite(out["loss"])
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert sum(moved) >= len(moved) - 2  # all but the frozen missing-modality embedding(s)
    assert not any(hasattr(m, "_forward_hooks") and m._forward_hooks for m in model.modules())  # hooks removed


def test_centralised_fit_with_dp_spends_at_most_the_budget(tmp_path: Path) -> None:
    """``fit(..., epoch_fn=DPTrainer(...).epoch)`` (fedpcr train --dp): epsilon per epoch grows, within the budget."""
    from common.config import TrainConfig
    from common.data import PCRDataset, load_cache
    from common.train import fit
    from tests.cache_factory import make_cache

    cache = load_cache(make_cache(tmp_path, n=16, signal="clinical"))
    cfg = preset("small", use_image=False)
    ids = cache.labelled_ids()
    train = PCRDataset(cache, ids[:12], clinical_features=cfg.clinical_features)
    val = PCRDataset(cache, ids[12:], clinical_features=cfg.clinical_features)
    tcfg = TrainConfig(batch_size=4, epochs=2, patience=0, device="cpu")
    model = build_model(cfg)
    trainer = dp.DPTrainer(model, train, tcfg, dp.DPConfig(target_epsilon=2.0))
    res = fit(model, train, val, tcfg, log=None, epoch_fn=trainer.epoch)
    eps = [row["epsilon"] for row in res.history]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] <= 2.0 + 1e-6
    with pytest.raises(dp.DPBudgetExceeded, match=r"allowed 2\.000"):
        trainer.epoch(3)  # a third epoch was not in the budget
