"""The site policy's generic rules applied to one instruction from the coordinator (no torch, no data).

``check_policy`` compares what a train/evaluate message asks for (its round config and the run config
the site would act on) with the hospital's :class:`client.policy.SitePolicy` and raises
:class:`client.site.SiteRefusal` with the rule's error code (``common.protocol.POLICY_*``), a short
public reason (rule name and the offending setting's value) and the full reason for the site's log.
The hospital's settings always win: nothing is clamped, a round asking for more is refused.
DP budgets and protected evaluation counts are applied by the privacy code (issue 12), not here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from client.policy import SitePolicy
from client.site import SiteRefusal
from common.protocol import (
    POLICY_BATCH_SIZE,
    POLICY_DP,
    POLICY_EVAL_REQUESTS,
    POLICY_LOCAL_EPOCHS,
    POLICY_LR,
    POLICY_MAX_ROUNDS,
    POLICY_MODEL,
    POLICY_PREP,
    POLICY_PRETRAINED,
    POLICY_TEST_SPLIT,
    RoundConfig,
    SiteSettings,
)

TRAIN, EVALUATE = "train", "evaluate"
#: context.state ConfigRecord holding this run's request counters (per site, never sent).
COUNTERS_STATE = "fedpcr-governance"


def _refuse(code: int, rule: str, asked: Any, allowed: Any) -> SiteRefusal:
    """A refusal naming the rule with what was asked and what the policy allows (numbers / hashes only)."""
    short = f"policy {rule}: asked {asked}, site allows {allowed}"
    return SiteRefusal(f"site policy refuses the round: {short}", code=code, public=short)


def accepted_model_hashes(policy: SitePolicy) -> set[str]:
    """Model hashes the site approves: its named presets' hashes plus the listed ``model_hashes``."""
    from common.models.config import preset

    return {preset(name).hash() for name in policy.code.model_presets} | set(policy.code.model_hashes)


def dp_requested(rc: RoundConfig) -> bool:
    """Whether the round config asks for DP-SGD (any ``dp*`` / ``*noise*`` field set and non-zero).

    The DP keys belong to the privacy code (issue 12); this reads them generically so ``require_dp``
    works whatever the fields are called.
    """
    for f in dataclasses.fields(rc):
        if f.name.startswith("dp") or "noise" in f.name:
            value = getattr(rc, f.name)
            if value not in (None, False, 0, 0.0, ""):
                return True
    return False


def check_policy(policy: SitePolicy, settings: SiteSettings, rc: RoundConfig, kind: str,
                 counts: Mapping[str, int], prep_hash: str) -> None:
    """Raise SiteRefusal (rule code) when the instruction asks for more than the policy allows.

    ``counts`` = requests of each kind received in this run INCLUDING this one; ``prep_hash`` = the site
    cache's own preprocessing hash.
    """
    code_p, train_p, eval_p = policy.code, policy.training, policy.evaluation
    model_cfg = settings.model()
    if model_cfg.pretrained_path and not code_p.allow_pretrained_path:
        raise _refuse(POLICY_PRETRAINED, "code.allow_pretrained_path", "a pretrained-weights path", "none")
    mine = model_cfg.hash()
    accepted = accepted_model_hashes(policy)
    if "*" not in accepted and mine not in accepted:
        raise _refuse(POLICY_MODEL, "code.model_presets/model_hashes", f"model {mine}",
                      f"{len(accepted)} approved model(s)")
    if code_p.prep_hashes and prep_hash not in code_p.prep_hashes:
        raise _refuse(POLICY_PREP, "code.prep_hashes", f"prep {prep_hash}", f"{len(code_p.prep_hashes)} approved")
    if kind == TRAIN:
        _check_training(policy, settings, rc, counts.get(TRAIN, 0))
    else:
        if counts.get(EVALUATE, 0) > eval_p.max_requests_per_run:
            raise _refuse(POLICY_EVAL_REQUESTS, "evaluation.max_requests_per_run", counts.get(EVALUATE, 0),
                          eval_p.max_requests_per_run)
        if rc.eval_split == "test" and not eval_p.allow_test_split:
            raise _refuse(POLICY_TEST_SPLIT, "evaluation.allow_test_split", "eval-split=test", "val only")


def _check_training(policy: SitePolicy, settings: SiteSettings, rc: RoundConfig, n_train: int) -> None:
    """The training section (+ require_dp) against one train instruction."""
    train_p = policy.training
    rounds = max(n_train, rc.server_round)
    if rounds > train_p.max_rounds_per_run:
        raise _refuse(POLICY_MAX_ROUNDS, "training.max_rounds_per_run", f"round {rounds}", train_p.max_rounds_per_run)
    epochs = rc.local_epochs if rc.local_epochs is not None else settings.local_epochs
    if epochs > train_p.max_local_epochs:
        raise _refuse(POLICY_LOCAL_EPOCHS, "training.max_local_epochs", epochs, train_p.max_local_epochs)
    train_cfg = settings.train()
    lr = rc.lr if rc.lr is not None else train_cfg.lr
    if not train_p.lr_min <= lr <= train_p.lr_max:
        raise _refuse(POLICY_LR, "training.lr_min/lr_max", f"lr {lr:g}", f"[{train_p.lr_min:g}, {train_p.lr_max:g}]")
    if train_cfg.batch_size < train_p.min_batch_size:
        raise _refuse(POLICY_BATCH_SIZE, "training.min_batch_size", train_cfg.batch_size, f">= {train_p.min_batch_size}")
    if policy.privacy.require_dp and not dp_requested(rc):
        raise _refuse(POLICY_DP, "privacy.require_dp", "a round without DP-SGD", "DP-SGD rounds only")


def count_request(state: Any, kind: str) -> dict[str, int]:
    """Add this request to the run's counters in ``context.state`` (a ConfigRecord); return all counters."""
    from flwr.app import ConfigRecord

    record = state.config_records.get(COUNTERS_STATE) if COUNTERS_STATE in state.config_records else None
    counts = {TRAIN: 0, EVALUATE: 0}
    if record is not None:
        counts.update({k: int(v) for k, v in record.items() if k in counts})
    counts[kind] += 1
    state[COUNTERS_STATE] = ConfigRecord(dict(counts))
    return counts
