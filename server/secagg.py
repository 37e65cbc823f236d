"""Secure aggregation of a train round with Flower's SecAgg+ (run option ``secagg = true``).

Flower 1.41 ships SecAgg+ only in its legacy workflow API: ``SecAggPlusWorkflow`` runs the four protocol
stages over the Grid and calls a legacy ``Strategy`` (``configure_fit`` / ``aggregate_fit``) through a
``LegacyContext``. This module drives exactly that workflow for ONE train round inside our Message-API
ServerApp (the evaluate rounds, checkpoints and bundle are unchanged): the global arrays go out as legacy
``Parameters`` with the state_dict names in the fit config, the sites (``client/secagg.py``: Flower's
``secaggplus_mod`` + an adapter to our train handler) send only masked, quantised vectors, and the
server unmasks only their weighted SUM. The coordinator never holds one site's update.

Quantisation: each site scales its weights by patients / ``secagg-max-weight``, clips to
+-``secagg-clip-range`` and maps them to ``secagg-quantization-range`` levels, so the aggregate equals
plain FedAvg within about sites x (2 clip / range) x max_weight / total patients per value
(tests/test_secagg.py measures it). Per-site train metrics (patients, loss, epsilon) still arrive in the clear: they are
aggregates the plain path sends too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.protocol import EPSILON, NUM_EXAMPLES, TRAIN_LOSS

log = logging.getLogger("flwr")

#: Fit-config key carrying the state_dict names of the arrays, newline-joined (legacy Parameters have none).
ARRAY_NAMES = "fedpcr-array-names"


def check_secagg_sites(n_sites: int, threshold: int, num_shares: int) -> None:
    """Refuse secure aggregation that cannot run or protect: fewer sites than its threshold, or than 2."""
    need = max(2, int(threshold))
    if n_sites < need:
        raise ValueError(f"secure aggregation needs at least {need} sites (reconstruction threshold "
                         f"{threshold}, shares {num_shares}); only {n_sites} connected")
    if threshold > num_shares:
        raise ValueError(f"secagg-threshold {threshold} > secagg-num-shares {num_shares}")


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < n and time.time() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    return nodes


def _legacy_strategy(cfg: Any, rnd: int, fit_config: dict[str, Any], captured: list) -> Any:
    """A legacy FedAvg whose fit config is our round config and that records each site's (node, metrics)."""
    from flwr.server.strategy import FedAvg

    class _Recording(FedAvg):
        def aggregate_fit(self, server_round, results, failures):  # type: ignore[override]
            captured.extend((proxy.node_id, res.num_examples, dict(res.metrics)) for proxy, res in results)
            return super().aggregate_fit(server_round, results, failures)

    return _Recording(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg.min_nodes,
                      min_available_clients=cfg.min_nodes, on_fit_config_fn=lambda _r: dict(fit_config))


def secagg_train_round(grid: Grid, rnd: int, arrays: ArrayRecord, config: ConfigRecord, cfg: Any
                       ) -> tuple[ArrayRecord, MetricRecord | None, list[str], list[dict[str, Any]], dict[str, float]]:
    """One SecAgg+ train round -> (new global arrays, metrics, sites, refusals, epsilon per site).

    Same return shape as ``server.app._train_round``; raises when the protocol halts (too few sites).
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    nodes = _wait_for_nodes(grid, int(cfg.min_nodes), float(cfg.round_timeout))
    check_secagg_sites(len(nodes), int(cfg.secagg_threshold), int(cfg.secagg_num_shares))
    names = list(arrays.keys())
    originals = arrays.to_numpy_ndarrays()
    captured: list = []
    fit_config = {**dict(config), "server-round": int(rnd), ARRAY_NAMES: "\n".join(names)}  # legacy: scalars only
    ctx = LegacyContext(Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        config=ServerConfig(num_rounds=int(cfg.num_server_rounds)),
                        strategy=_legacy_strategy(cfg, rnd, fit_config, captured))
    for nid in nodes:
        ctx.client_manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=grid.run.run_id))
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: int(rnd)})
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(originals), keep_input=True)
    max_weight = float(cfg.secagg_max_weight)
    SecAggPlusWorkflow(num_shares=int(cfg.secagg_num_shares), reconstruction_threshold=int(cfg.secagg_threshold),
                       clipping_range=float(cfg.secagg_clip_range),
                       quantization_range=int(cfg.secagg_quantization_range), max_weight=max_weight,
                       timeout=float(cfg.round_timeout))(grid, ctx)
    if not captured:
        raise RuntimeError(f"round {rnd}: secure aggregation halted (too few sites finished the protocol; "
                           f"threshold {cfg.secagg_threshold}); see the SecAgg+ log above")
    summed = parameters_to_ndarrays(compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD],
                                                                     keep_input=True))
    new = ArrayRecord({k: Array(np.asarray(v).astype(o.dtype).reshape(o.shape))
                       for k, v, o in zip(names, summed, originals)})
    total = sum(n for _, n, _ in captured) or 1
    metrics = MetricRecord({NUM_EXAMPLES: int(total),
                            TRAIN_LOSS: float(sum(n * float(m.get(TRAIN_LOSS, 0.0)) for _, n, m in captured) / total)})
    eps = {f"node-{nid}": float(m[EPSILON]) for nid, _, m in captured if EPSILON in m}
    for site, e in sorted(eps.items()):
        log.info("round %d: site %s DP epsilon spent %.3f", rnd, site, e)
    log.info("round %d: SecAgg+ aggregate of %d sites (%d patients); no individual update was seen", rnd,
             len(captured), total)
    return new, metrics, [f"node-{nid}" for nid, _, _ in captured], [], eps


__all__ = ["ARRAY_NAMES", "check_secagg_sites", "secagg_train_round"]
