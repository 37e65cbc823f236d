"""Build the Flower strategy named by the run config (all from ``flwr.serverapp.strategy``).

FedBN is FedAvg on the server: the server averages every array, but each client keeps its own
norm-layer parameters (``context.state``) and overwrites the incoming global ones, so the
averaged norm parameters only end up in the final (global) bundle — the rule for sites that
never trained. Evaluation metrics are aggregated by summing threshold counts (never averaging AUCs).

The server waits for nodes itself (``server.rounds``), so every strategy is built with minimums of 1
and samples from the nodes the round loop hands it. Robustness: every reply is validated first
(``server.validation``: finite, shapes, norm bound, declared sizes); on top of that, from
``robust-from`` valid replies up the mean-based strategies (fedavg, fedprox, fedbn) aggregate with
Flower's FedTrimmedAvg cutting at least one site per end, and ``fedtrimmedavg`` always cuts at least
one per end from 3 replies up (Flower's ``int(beta * n)`` cuts nothing below 5 sites at beta 0.2).
What each strategy tolerates at 3, 5 and 10 sites: docs/fault-tolerance.md.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from typing import Any, Sequence

from flwr.app import ArrayRecord, Message, MetricRecord

from common.protocol import NUM_EXAMPLES
from server.aggregation import sum_counts_aggr
from server.config import FederationConfig


def build_strategy(cfg: FederationConfig) -> Strategy:
    """The configured strategy; patients (``NUM_EXAMPLES``) weight the averages."""
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=1,  # server.rounds waits for min-nodes (bounded); Flower's own wait is unbounded
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=NUM_EXAMPLES,
        evaluate_metrics_aggr_fn=sum_counts_aggr,
    )
    name = cfg.strategy
    if name in ("fedavg", "fedbn"):
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, eta=cfg.server_lr, tau=cfg.server_tau)
    if name == "fedyogi":
        return FedYogi(**common, eta=cfg.server_lr, tau=cfg.server_tau)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    if name == "fedmedian":
        return FedMedian(**common)
    raise ValueError(f"unknown strategy {name!r}")


def uses_local_norm(cfg: FederationConfig) -> bool:
    """Whether clients keep their norm layers local (FedBN)."""
    return cfg.strategy == "fedbn"


#: Strategies whose aggregate is a (weighted) mean, replaced by a trimmed mean from ``robust-from`` sites up.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedbn")


def trim_fraction(cfg: FederationConfig, n_replies: int, n_rejected: int = 0) -> float | None:
    """The FedTrimmedAvg beta for a round with ``n_replies`` valid updates, or None for the configured strategy.

    The trimming budget is ``max(1, int(trim_beta * n))`` bad sites per end over the ``n`` sites that
    answered; sites already rejected by validation (``n_rejected``) count against it, so a round that lost
    its poisoned site to validation does not also throw away honest sites (measured: docs/fault-tolerance.md).
    The beta returned cuts that many per end (``int(beta * n_replies)``) and never all of them.
    """
    total = n_replies + n_rejected
    robust = cfg.strategy == "fedtrimmedavg"
    robust |= cfg.strategy in MEAN_STRATEGIES and cfg.robust_from > 0 and total >= cfg.robust_from
    if not robust or n_replies < 3:
        return None
    cut = min(max(1, int(cfg.trim_beta * total)) - n_rejected, (n_replies - 1) // 2)
    if cut <= 0:
        return None
    return (cut + 0.25) / n_replies  # int(beta * n) == cut, and beta < 0.5


def server_step(strategy: Strategy, rnd: int, current: ArrayRecord, aggregate: ArrayRecord,
                total: int) -> ArrayRecord:
    """The new global model from a FedAvg ``aggregate`` computed elsewhere (SecAgg+'s unmasked sum): FedAvg /
    FedProx take it as is; FedAdam / FedYogi apply their own server optimiser step to it, through Flower's
    ``aggregate_train`` on that one aggregate (the weighted mean of one reply is the reply)."""
    if not hasattr(strategy, "current_arrays"):  # not a FedOpt strategy
        return aggregate
    from flwr.app import MessageType, RecordDict

    strategy.current_arrays = {k: a.numpy() for k, a in current.items()}  # what configure_train would set
    reply = Message(content=RecordDict({strategy.arrayrecord_key: aggregate,
                                        "metrics": MetricRecord({strategy.weighted_by_key: int(total)})}),
                    dst_node_id=0, message_type=MessageType.TRAIN)
    new, _ = strategy.aggregate_train(rnd, [reply])
    if new is None:
        raise RuntimeError(f"round {rnd}: {type(strategy).__name__} returned no model from the secure aggregate")
    return new


def aggregate_train(strategy: Strategy, cfg: FederationConfig, rnd: int, replies: Sequence[Message],
                    n_rejected: int = 0) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Aggregate validated train replies with the configured strategy or, when due, a trimmed mean."""
    beta = trim_fraction(cfg, len(replies), n_rejected)
    if beta is None:
        return strategy.aggregate_train(rnd, replies)
    trimmed: Any = FedTrimmedAvg(beta=beta, weighted_by_key=NUM_EXAMPLES)
    return trimmed.aggregate_train(rnd, replies)
