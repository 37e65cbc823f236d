"""The coordinator's side of the privacy options: the DP request in the round config, the epsilon each
site reports, and a SecAgg+ train round in the round loop's own result shape."""

from __future__ import annotations

import logging
from typing import Any, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from common.protocol import EPSILON, RoundConfig
from server.validation import reply_site

log = logging.getLogger("flwr")


def with_dp_request(rc: RoundConfig, cfg: Any) -> RoundConfig:
    """``rc`` asking for DP-SGD when the run does (each site applies the stricter of this and its policy)."""
    if not cfg.dp:
        return rc
    return rc.replace(dp=True, dp_epsilon=float(cfg.dp_epsilon), dp_delta=float(cfg.dp_delta),
                      dp_max_grad_norm=float(cfg.dp_max_grad_norm),
                      dp_noise_multiplier=float(cfg.dp_noise_multiplier), dp_rounds=int(cfg.num_server_rounds))


def site_epsilons(replies: Iterable[Message], rnd: int) -> dict[str, float]:
    """Epsilon spent so far per site (DP train replies), logged; {} when no site trained with DP."""
    out = {}
    for msg in replies:
        if not msg.has_error():
            m = next(iter(msg.content.metric_records.values()), {})
            if EPSILON in m:
                out[reply_site(msg)] = float(m[EPSILON])
    for site, eps in sorted(out.items()):
        log.info("round %d: site %s DP epsilon spent %.3f", rnd, site, eps)
    return out


def secagg_round(grid: Grid, rnd: int, arrays: ArrayRecord, config: ConfigRecord, cfg: Any
                 ) -> tuple[ArrayRecord | None, Any, list[str], dict[str, list[dict[str, Any]]], dict[str, float], str]:
    """One SecAgg+ train round: (arrays or None, metrics, sites, faults, epsilon per site, failure reason)."""
    from server.secagg import secagg_train_round

    try:
        new, metrics, sites, refused, eps = secagg_train_round(grid, rnd, arrays, config, cfg)
    except (RuntimeError, ValueError) as exc:  # the protocol halted (too few sites / dropouts)
        log.error("round %d: SecAgg+ round failed: %s", rnd, exc)
        return None, None, [], {"refused": []}, {}, f"SecAgg+: {exc}"
    return new, metrics, list(sites), {"refused": list(refused)}, dict(eps), ""
