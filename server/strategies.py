"""Build the Flower strategy named by the run config (all from ``flwr.serverapp.strategy``).

FedBN is FedAvg on the server: the server averages every array, but each client keeps its own
norm-layer parameters (``context.state``) and overwrites the incoming global ones, so the
averaged norm parameters only end up in the final (global) bundle — the rule for sites that
never trained. Evaluation metrics are aggregated by summing threshold counts (never averaging AUCs).
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

from common.protocol import NUM_EXAMPLES
from server.aggregation import sum_counts_aggr
from server.config import FederationConfig


def build_strategy(cfg: FederationConfig) -> Strategy:
    """The configured strategy; patients (``NUM_EXAMPLES``) weight the averages."""
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes,
        min_available_nodes=cfg.min_nodes,
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
