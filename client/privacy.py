"""The site's privacy state for one run: DP-SGD settings (its policy wins), the persisted accountant, a secret.

State lives on the site's disk, per run: ``<state-dir>/run-<run id>/`` where ``state-dir`` is the
SuperNode's node config (``--node-config 'state-dir="..."'``) or, by default, ``<cache>.fedpcr-state``
next to the site cache. It holds ``accountant.json`` (Opacus RDP history, written after every DP round,
so a restarted client continues the same budget) and ``secret`` (random bytes keying the evaluation noise).
Torch is imported only when a DP round trains.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from client.site import SiteRefusal
from common.protocol import PRIVACY_BUDGET, RoundConfig

#: Node-config key: where the site keeps its privacy state (default: next to its cache).
STATE_DIR = "state-dir"
ACCOUNTANT_FILE = "accountant.json"
SECRET_FILE = "secret"


def run_state_dir(node_config: Mapping[str, Any], cache_path: str, run_id: int) -> Path:
    """This run's privacy-state folder at the site (created)."""
    base = node_config.get(STATE_DIR)
    root = Path(str(base)) if base else Path(str(Path(cache_path).resolve()) + ".fedpcr-state")
    path = root / f"run-{int(run_id)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def site_secret(state: Path) -> bytes:
    """32 random bytes kept in the run's state folder (never sent): keys the evaluation noise."""
    path = state / SECRET_FILE
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(os.urandom(32))
        tmp.replace(path)
    return path.read_bytes()


@dataclass(frozen=True)
class DPPlan:
    """The DP-SGD settings this site applies in a round (its policy already applied)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    allowed_epsilon: float
    sample_rate: float
    steps: int  #: steps this round (epochs x steps per epoch)


def plan_round(rc: RoundConfig, policy: Any, n_train: int, batch_size: int, epochs: int,
               planned_rounds: int) -> DPPlan | None:
    """DP settings for a train round, or None (no DP asked and not required).

    The coordinator may ask (``dp`` keys of the round config) but never loosens: epsilon and delta are
    the min of asked and the site's, the clipping bound the min, the noise the max of asked, the site's
    ``min_noise_multiplier`` and the noise calibrated so ``planned_rounds`` rounds spend the budget.
    """
    from common.dp import calibrate_noise, steps_per_epoch

    if not (rc.dp or policy.require_dp):
        return None
    eps = min(rc.dp_epsilon or math.inf, float(policy.max_epsilon))
    delta = min(rc.dp_delta or math.inf, float(policy.delta))
    clip = min(rc.dp_max_grad_norm or math.inf, float(policy.max_grad_norm))
    rate, per_epoch = steps_per_epoch(n_train, batch_size)
    rounds = max(1, int(rc.dp_rounds or planned_rounds))
    noise = max(float(rc.dp_noise_multiplier or 0.0), float(policy.min_noise_multiplier),
                calibrate_noise(eps, delta, rate, rounds * epochs * per_epoch))
    return DPPlan(noise, clip, delta, eps, rate, epochs * per_epoch)


class SiteAccountant:
    """The run's (epsilon, delta) accountant at the site, persisted after every DP round."""

    def __init__(self, state: Path) -> None:
        from common.dp import load_history

        self.path = state / ACCOUNTANT_FILE
        self.history, _ = load_history(self.path)

    def spent(self, delta: float) -> float:
        from common.dp import epsilon_of

        return epsilon_of(self.history, delta)

    def check(self, plan: DPPlan, site: str) -> float:
        """Projected epsilon after the round; SiteRefusal(PRIVACY_BUDGET) naming spent and allowed when over."""
        from common.dp import DPBudgetExceeded, check_budget

        entry = (plan.noise_multiplier, plan.sample_rate, plan.steps)
        try:
            return check_budget(self.history, entry, plan.allowed_epsilon, plan.delta)
        except DPBudgetExceeded as exc:
            raise SiteRefusal(f"site {site} refuses: {exc}", code=PRIVACY_BUDGET) from exc

    def record(self, entry: tuple[float, float, int], plan: DPPlan) -> float:
        """Add a trained round and persist; returns epsilon spent so far."""
        from common.dp import save_history

        self.history.append(entry)
        save_history(self.path, self.history, {"delta": plan.delta, "allowed_epsilon": plan.allowed_epsilon})
        return self.spent(plan.delta)


def train_private(model: Any, dataset: Any, train_cfg: Any, epochs: int, plan: DPPlan,
                  accountant: SiteAccountant, seed: int) -> dict[str, Any]:
    """One DP-SGD round: ``{"loss", "n", "epsilon", "delta"}``; the accountant is saved before returning."""
    from common.dp import prepare_model, train_epochs_dp

    prepare_model(model)
    out = train_epochs_dp(model, dataset, train_cfg, epochs, plan.noise_multiplier, plan.max_grad_norm, seed=seed)
    eps = accountant.record(out["entry"], plan)
    return {"loss": out["loss"], "n": out["n"], "epsilon": eps, "delta": plan.delta}


__all__ = ["DPPlan", "SiteAccountant", "STATE_DIR", "plan_round", "run_state_dir", "site_secret", "train_private"]
