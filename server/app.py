"""Flower ServerApp: federated rounds with checkpoint/resume, pooled validation AUROC, final bundle.

Each round: train (strategy from the run config), evaluate (sites send threshold counts; the
server sums them for the pooled validation AUROC and computes per-site AUROCs from each reply),
one ``metrics.jsonl`` row, one checkpoint. A restarted server continues after the last
checkpointed round. The best round (pooled validation AUROC) becomes the model bundle; its
threshold is chosen on the summed validation counts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from common.hashing import stable_hash
from common.protocol import AUROC, EPSILON, NUM_EXAMPLES, TRAIN_LOSS, RoundConfig, describe_error
from server.aggregation import RoundEvaluation, evaluate_replies, safe_auroc, site_name
from server.checkpoint import (
    append_metrics,
    load_checkpoint,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
    truncate_metrics,
)
from server.config import FederationConfig
from server.strategies import build_strategy, uses_local_norm

log = logging.getLogger("flwr")  # Flower streams this logger's records to `flwr run --stream`

#: FederationConfig fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("num_server_rounds", "resume", "round_timeout", "out_dir", "eval_split", "initial_eval")


def config_fingerprint(cfg: FederationConfig) -> str:
    """Hash of the settings a checkpoint is only valid for."""
    return stable_hash({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a record (the checkpoint's npz format)."""
    return dict(zip(record.keys(), record.to_numpy_ndarrays()))


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """ArrayRecord from a checkpoint's named numpy arrays."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def log_refusals(replies: Iterable[Message], phase: str, rnd: int) -> list[dict[str, Any]]:
    """Log every error reply (refused or failed site) with its node id; return them for metrics."""
    out = []
    for msg in replies:
        if msg.has_error():
            node = msg.metadata.src_node_id
            reason = msg.error.reason or describe_error(msg.error.code)
            log.error("round %d %s: node %d REFUSED/FAILED: %s", rnd, phase, node, reason)
            out.append({"node": int(node), "phase": phase, "code": int(msg.error.code), "reason": reason})
    return out


def _initial_arrays(cfg: FederationConfig) -> ArrayRecord:
    import torch

    from common.models import build_model

    torch.manual_seed(cfg.seed)
    return ArrayRecord(build_model(cfg.model()).state_dict())


def round_config(cfg: FederationConfig) -> ConfigRecord:
    """The per-round site config (common.protocol.RoundConfig); strategies add the server round."""
    rc = RoundConfig(prep_hash=cfg.prep().hash(), model_hash=cfg.model().hash(),
                     local_epochs=int(cfg.local_epochs), lr=float(cfg.train().lr),
                     proximal_mu=float(cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0),
                     local_norm=bool(uses_local_norm(cfg)), eval_split=cfg.eval_split)
    if cfg.dp:  # a request: each site applies the stricter of this and its own policy
        rc = rc.replace(dp=True, dp_epsilon=float(cfg.dp_epsilon), dp_delta=float(cfg.dp_delta),
                        dp_max_grad_norm=float(cfg.dp_max_grad_norm),
                        dp_noise_multiplier=float(cfg.dp_noise_multiplier), dp_rounds=int(cfg.num_server_rounds))
    return ConfigRecord(rc.to_dict())


def site_epsilons(replies: Iterable[Message], rnd: int) -> dict[str, float]:
    """Epsilon spent so far per site (DP train replies), logged; {} when no site trained with DP."""
    out = {}
    for msg in replies:
        if not msg.has_error():
            m = next(iter(msg.content.metric_records.values()))
            if EPSILON in m:
                out[site_name(msg)] = float(m[EPSILON])
    for site, eps in sorted(out.items()):
        log.info("round %d: site %s DP epsilon spent %.3f", rnd, site, eps)
    return out


def _evaluate(strategy: Any, grid: Grid, rnd: int, arrays: ArrayRecord, cfg: FederationConfig,
              timeout: float) -> tuple[RoundEvaluation, list[dict[str, Any]]]:
    replies = list(grid.send_and_receive(
        messages=strategy.configure_evaluate(rnd, arrays, round_config(cfg), grid), timeout=timeout))
    refused = log_refusals(replies, "evaluate", rnd)
    agg = strategy.aggregate_evaluate(rnd, replies)  # summed counts + pooled AUROC (sum_counts_aggr)
    ev = evaluate_replies(replies)
    if agg is not None:
        log.info("round %d: pooled validation AUROC %.4f from summed counts of %d patients", rnd,
                 float(agg.get(AUROC, float("nan"))), int(agg.get(NUM_EXAMPLES, ev.n_examples)))
    return ev, refused


def _better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


def _start(cfg: FederationConfig, out: Path, strategy: Any, fingerprint: str
           ) -> tuple[int, ArrayRecord, ArrayRecord, dict[str, Any], bool]:
    """(first round, arrays, best arrays, meta, fresh) from the checkpoint in ``out`` or from scratch."""
    ckpt = load_checkpoint(out) if cfg.resume else None
    if ckpt is not None and ckpt.meta.get("config_hash") != fingerprint:
        raise ValueError(f"checkpoint in {out} was made with different federation settings "
                         f"({ckpt.meta.get('config_hash')} != {fingerprint}); use another out-dir or resume=false")
    if ckpt is not None:
        restore_strategy_state(strategy, ckpt.strategy_state)
        truncate_metrics(out, ckpt.round)
        log.info("resuming from checkpoint: round %d finished; continuing at round %d of %d",
                 ckpt.round, ckpt.round + 1, cfg.num_server_rounds)
        return ckpt.round + 1, _record(ckpt.arrays), _record(ckpt.best_arrays), dict(ckpt.meta), False
    arrays = _initial_arrays(cfg)
    meta = {"best_round": 0, "best_auroc": float("nan"), "best_counts": None, "train_sites": [],
            "strategy": cfg.strategy, "config_hash": fingerprint}
    (out / "metrics.jsonl").unlink(missing_ok=True)
    return 1, arrays, arrays, meta, True


def _train_round(strategy: Any, grid: Grid, rnd: int, arrays: ArrayRecord, cfg: FederationConfig
                 ) -> tuple[ArrayRecord, Any, list[str], list[dict[str, Any]], dict[str, float]]:
    """One train round: (new global arrays, aggregated metrics, sites that trained, refusals, DP epsilon per site)."""
    if cfg.secagg:
        from server.secagg import secagg_train_round

        return secagg_train_round(grid, rnd, arrays, round_config(cfg), cfg)
    replies = list(grid.send_and_receive(
        messages=strategy.configure_train(rnd, arrays, round_config(cfg), grid), timeout=float(cfg.round_timeout)))
    refused = log_refusals(replies, "train", rnd)
    agg_arrays, agg_metrics = strategy.aggregate_train(rnd, replies)

    if agg_arrays is None:
        raise RuntimeError(f"round {rnd}: no site returned a model update ({len(refused)} refused/failed; "
                           "see the errors above)")
    sites = sorted({site_name(m) for m in replies if not m.has_error()})
    return agg_arrays, agg_metrics, sites, refused, site_epsilons(replies, rnd)


def run_federation(grid: Grid, context: Context, overrides: Mapping[str, Any] | None = None) -> Path:
    """The federated training loop; returns the bundle directory."""
    cfg = FederationConfig.from_run_config(context.run_config, overrides)
    out = Path(cfg.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(cfg)
    timeout = float(cfg.round_timeout)
    start, arrays, best, meta, fresh = _start(cfg, out, strategy, config_fingerprint(cfg))
    if fresh and cfg.initial_eval:
        t0 = time.time()
        ev0, refused0 = _evaluate(strategy, grid, 0, arrays, cfg, timeout)
        append_metrics(out, {"round": 0, "strategy": cfg.strategy, "pooled_val_auroc": ev0.pooled_auroc,
                             "val_n": ev0.n_examples, "per_site": ev0.per_site, "train_loss": None,
                             "refused": refused0, "time_s": time.time() - t0})
    for rnd in range(start, cfg.num_server_rounds + 1):
        t0 = time.time()
        arrays, agg_metrics, sites, refused, eps = _train_round(strategy, grid, rnd, arrays, cfg)
        meta["train_sites"] = sorted(set(meta["train_sites"]) | set(sites))
        if eps:
            meta["epsilon"] = {**meta.get("epsilon", {}), **eps}
        ev, refused_eval = _evaluate(strategy, grid, rnd, arrays, cfg, timeout)
        if _better(ev.pooled_auroc, float(meta["best_auroc"]) if meta["best_auroc"] is not None else math.nan):
            meta.update(best_round=rnd, best_auroc=ev.pooled_auroc,
                        best_counts=None if ev.pooled_counts is None else ev.pooled_counts.tolist())
            best = arrays
        row = {"round": rnd, "strategy": cfg.strategy, "pooled_val_auroc": ev.pooled_auroc,
               "val_n": ev.n_examples, "per_site": ev.per_site,
               "train_loss": None if agg_metrics is None else float(agg_metrics.get(TRAIN_LOSS, math.nan)),
               "train_sites": sites, "refused": refused + refused_eval, "time_s": time.time() - t0}
        if eps:
            row["epsilon"] = eps
        if ev.test_counts is not None:
            row["pooled_test_auroc"] = safe_auroc(ev.test_counts)
        append_metrics(out, row)
        save_checkpoint(out, rnd, _numpy(arrays), _numpy(best), strategy_state(strategy), meta)
        log.info("round %d done: pooled val AUROC %.4f (best %.4f at round %s); checkpoint saved in %s",
                 rnd, ev.pooled_auroc, meta["best_auroc"] if meta["best_auroc"] is not None else math.nan,
                 meta["best_round"], out)
    return write_bundle(out, cfg, best, meta)


def write_bundle(out: Path, cfg: FederationConfig, arrays: ArrayRecord, meta: Mapping[str, Any]) -> Path:
    """Save the best round's model as a ``fedpcr`` bundle; threshold from the summed validation counts."""
    import torch

    from common.bundle import save_bundle
    from common.models import build_model
    from server.aggregation import threshold_from_counts, val_metrics_from_counts

    model_cfg, train_cfg = cfg.model(), cfg.train()
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    model.load_state_dict(arrays.to_torch_state_dict())
    counts = meta.get("best_counts")
    if counts is not None:
        counts_np = np.asarray(counts, dtype=np.int64)
        threshold = threshold_from_counts(counts_np, train_cfg.youden_weight)
        val_metrics = val_metrics_from_counts(counts_np, threshold)
    else:
        threshold, val_metrics = 0.5, {}
    extra = {"federation": cfg.to_run_config(), "best_round": int(meta.get("best_round", 0)),
             "threshold_source": "summed federated validation counts (THRESHOLD_GRID)"}
    if meta.get("epsilon"):  # DP: epsilon spent per site over the whole run (delta: the run config's)
        extra["privacy"] = {"epsilon_per_site": dict(meta["epsilon"]), "delta": cfg.dp_delta,
                            "secagg": cfg.secagg}
    path = save_bundle(out / "bundle", model, model_cfg, cfg.prep(), train_cfg, list(meta.get("train_sites", [])),
                       val_metrics, threshold, extra=extra)
    log.info("final bundle (round %s, pooled val AUROC %s, threshold %.3f) written to %s",
             meta.get("best_round"), meta.get("best_auroc"), threshold, path)
    return path


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp with injected run-config overrides (simulation passes its settings here)."""
    overrides = dict(overrides or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, context, overrides)

    return app


#: The app Flower loads (``[tool.flwr.app.components] serverapp = "server.app:app"``).
app = make_server_app()
