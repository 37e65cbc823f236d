"""Flower ServerApp: federated rounds with checkpoint/resume, pooled validation AUROC, final bundle.

Each round: train (strategy from the run config), evaluate (sites send threshold counts; the
server sums them for the pooled validation AUROC and computes per-site AUROCs from each reply),
one ``metrics.jsonl`` row, one checkpoint. A restarted server continues after the last
checkpointed round. The best round (pooled validation AUROC) becomes the model bundle; its
threshold is chosen on the summed validation counts.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from common.encoding import EXACT
from common.hashing import stable_hash
from common.protocol import AUROC, NUM_EXAMPLES, TRAIN_LOSS, RoundConfig, describe_error
from common.score_grid import IDENTITY, from_grid, next_grid
from server.aggregation import RoundEvaluation, evaluate_replies, safe_auroc
from server.checkpoint import (
    append_metrics,
    load_checkpoint,
    lock_run_dir,
    non_finite_keys,
    restore_strategy_state,
    save_checkpoint,
    strategy_state,
    truncate_metrics,
)
from server.config import FederationConfig
from server.privacy_rounds import secagg_round, site_epsilons, with_dp_request
from server.rounds import NodeView, RunClock, SiteBook, exchange, missing_nodes, wait_for_nodes
from server.strategies import aggregate_train, build_strategy, server_step, uses_local_norm
from server.validation import Invalid, reply_site, validate_evaluate, validate_train
from server.wire import decoded, encoded

log = logging.getLogger("flwr")  # Flower streams this logger's records to `flwr run --stream`

#: FederationConfig fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("num_server_rounds", "resume", "round_timeout", "out_dir", "eval_split", "initial_eval",
                    "min_replies", "node_wait", "run_timeout")


def config_fingerprint(cfg: FederationConfig) -> str:
    """Hash of the settings a checkpoint is only valid for."""
    return stable_hash({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_FIELDS})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a record (the checkpoint's npz format)."""
    return dict(zip(record.keys(), record.to_numpy_ndarrays()))


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """ArrayRecord from a checkpoint's named numpy arrays."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def log_refusals(replies: Iterable[Message], phase: str, rnd: int, book: SiteBook | None = None
                 ) -> list[dict[str, Any]]:
    """Log every error reply (refused, failed or unavailable site) with its node id; return them for metrics."""
    out = []
    for msg in replies:
        if msg.has_error():
            node = int(msg.metadata.src_node_id)
            reason = msg.error.reason or describe_error(msg.error.code)
            site = book.name(node) if book is not None else f"node-{node}"
            log.error("round %d %s: node %d REFUSED/FAILED (site %s): %s", rnd, phase, node, site, reason)
            out.append({"node": node, "site": site, "phase": phase, "code": int(msg.error.code), "reason": reason})
    return out


def log_invalid(invalid: Iterable[Invalid], rnd: int) -> list[dict[str, Any]]:
    """Log every rejected reply by site; return the metrics rows."""
    rows = []
    for bad in invalid:
        log.error("round %d %s: site %s (node %d) sent an INVALID reply, not used: %s", rnd, bad.phase, bad.site,
                  bad.node, bad.reason)
        rows.append(bad.as_row())
    return rows


def _initial_arrays(cfg: FederationConfig) -> ArrayRecord:
    import torch

    from common.models import build_model

    torch.manual_seed(cfg.seed)
    return ArrayRecord(build_model(cfg.model()).state_dict())


def round_config(cfg: FederationConfig, phase: str = "train", eval_grid: tuple[float, float] = IDENTITY
                 ) -> ConfigRecord:
    """The per-round site config (common.protocol.RoundConfig); strategies add the server round.

    FedBN keeps norm layers local in TRAINING only: evaluate rounds score the model the bundle deploys
    (averaged norm layers), so the best round and the operating threshold belong to that model.
    Evaluate rounds carry the evaluation grid (common/score_grid.py) unless it is the identity.
    """
    rc = RoundConfig(prep_hash=cfg.prep().hash(), model_hash=cfg.model().hash(),
                     local_epochs=int(cfg.local_epochs), lr=float(cfg.train().lr),
                     proximal_mu=float(cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0),
                     local_norm=bool(uses_local_norm(cfg)) and phase == "train", eval_split=cfg.eval_split,
                     update_encoding=None if cfg.update_encoding == EXACT else cfg.update_encoding)
    if phase == "evaluate" and tuple(eval_grid) != IDENTITY:
        rc = rc.replace(eval_logit_centre=float(eval_grid[0]), eval_logit_scale=float(eval_grid[1]))
    return ConfigRecord(with_dp_request(rc, cfg).to_dict())


@dataclass
class Run:
    """What the round loop carries between rounds (config, strategy, clock, site names, declared sizes)."""

    cfg: FederationConfig
    grid: Grid
    strategy: Any
    clock: RunClock
    book: SiteBook = field(default_factory=SiteBook)
    declared: dict[str, int] = field(default_factory=dict)
    first: bool = True
    #: Evaluation grid of the next evaluate round (moved by each round's pooled counts: adaptive-eval-grid).
    eval_grid: tuple[float, float] = IDENTITY

    def nodes(self) -> list[int]:
        """Nodes for the next round: min-nodes (round 1 of this process: until the run deadline), else the
        connected ones after node-wait if they are at least min-replies; [] when the run is out of time."""
        patience = -1.0 if self.first else float(self.cfg.node_wait)
        self.first = False
        return wait_for_nodes(self.grid, self.cfg.min_nodes, self.cfg.min_replies, patience, self.clock)

    def learn(self, replies: Iterable[Message]) -> None:
        """Remember which node is which site."""
        for msg in replies:
            if not msg.has_error():
                self.book.learn(int(msg.metadata.src_node_id), reply_site(msg))


def _evaluate(run: Run, rnd: int, arrays: ArrayRecord, nodes: list[int] | None = None
              ) -> tuple[RoundEvaluation, dict[str, list[dict[str, Any]]]]:
    """Evaluate ``arrays`` at the connected sites; (pooled result, {"refused", "invalid", "missing"} rows)."""
    nodes = sorted(int(n) for n in run.grid.get_node_ids()) if nodes is None else nodes
    sent = encoded(run.strategy.configure_evaluate(rnd, arrays, round_config(run.cfg, "evaluate", run.eval_grid),
                                                   NodeView(run.grid, nodes)), run.cfg.update_encoding) \
        if nodes else []
    replies = exchange(run.grid, sent, float(run.cfg.round_timeout), run.clock)
    run.learn(replies)
    faults = {"refused": log_refusals(replies, "evaluate", rnd, run.book),
              "missing": run.book.rows(missing_nodes(sent, replies), "evaluate")}
    valid, invalid = validate_evaluate(replies)
    faults["invalid"] = log_invalid(invalid, rnd)
    ev = evaluate_replies(valid)
    if valid:
        agg = run.strategy.aggregate_evaluate(rnd, valid)  # summed counts + pooled AUROC (sum_counts_aggr)
        if agg is not None:
            log.info("round %d: pooled validation AUROC %.4f from summed counts of %d patients", rnd,
                     float(agg.get(AUROC, float("nan"))), int(agg.get(NUM_EXAMPLES, ev.n_examples)))
    return ev, faults


def _advance_grid(run: Run, ev: RoundEvaluation, meta: dict[str, Any]) -> None:
    """Place the next evaluation grid from this round's pooled counts (adaptive-eval-grid; kept for resume)."""
    if run.cfg.adaptive_eval_grid:
        run.eval_grid = next_grid(ev.pooled_counts, *run.eval_grid)
        meta["eval_grid"] = list(run.eval_grid)


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


def _conform(arrays: ArrayRecord, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Aggregated arrays cast back to the global model's dtypes (a mean of ints is a float)."""
    got = _numpy(arrays)
    return {k: np.asarray(got[k]).astype(ref.dtype, copy=False).reshape(ref.shape) for k, ref in reference.items()}


@dataclass
class TrainOutcome:
    """One train round: the new global arrays (None = round failed, model unchanged) and who took part."""

    arrays: ArrayRecord | None
    metrics: Any = None
    sites: list[str] = field(default_factory=list)
    faults: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reason: str = ""
    epsilon: dict[str, float] = field(default_factory=dict)  # DP: epsilon spent so far per site


def _train_round(run: Run, rnd: int, arrays: ArrayRecord, nodes: list[int]) -> TrainOutcome:
    """Send, collect (bounded), validate, aggregate; a round with < min-replies valid updates fails."""
    cfg, strategy = run.cfg, run.strategy
    if cfg.secagg:  # the coordinator never holds one site's update (server/secagg.py)
        new, metrics, sites, faults, eps, reason = secagg_round(run.grid, rnd, arrays, round_config(cfg), cfg)
        if new is not None:  # FedAdam / FedYogi: their server optimiser step on the secure aggregate
            new = _record(_conform(server_step(strategy, rnd, arrays, new, int(metrics[NUM_EXAMPLES])),
                                   _numpy(arrays)))
        return TrainOutcome(new, metrics, sites, faults, reason, eps)
    sent = encoded(strategy.configure_train(rnd, arrays, round_config(cfg), NodeView(run.grid, nodes)),
                   cfg.update_encoding)
    replies = decoded(exchange(run.grid, sent, float(cfg.round_timeout), run.clock), cfg.update_encoding)
    run.learn(replies)
    reference = _numpy(arrays)
    check = validate_train(replies, reference, run.declared, float(cfg.norm_bound))
    faults = {"refused": log_refusals(replies, "train", rnd, run.book),
              "missing": run.book.rows(missing_nodes(sent, replies), "train"),
              "invalid": log_invalid(check.invalid, rnd)}
    sites = [reply_site(m) for m in check.accepted]
    if len(check.accepted) < cfg.min_replies:
        return TrainOutcome(None, None, sites, faults, f"{len(check.accepted)} valid update(s) < min-replies "
                            f"{cfg.min_replies} (sent to {len(sent)} node(s))")
    before = copy.deepcopy(strategy_state(strategy))
    agg_arrays, agg_metrics = aggregate_train(strategy, cfg, rnd, check.accepted, len(check.invalid))
    if agg_arrays is None:
        restore_strategy_state(strategy, before)
        return TrainOutcome(None, None, sites, faults, "the strategy returned no aggregate")
    new = _conform(agg_arrays, reference)
    bad = non_finite_keys({**new, **{f"{a}/{k}": v for a, d in strategy_state(strategy).items() for k, v in d.items()}})
    if bad:  # cannot happen with validated finite inputs, but never let NaN into the model or optimiser state
        restore_strategy_state(strategy, before)
        return TrainOutcome(None, None, sites, faults, f"aggregate is non-finite in {bad[:3]}")
    return TrainOutcome(_record(new), agg_metrics, sites, faults, epsilon=site_epsilons(check.accepted, rnd))


def _failed_sites(faults: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    return sorted({row.get("site", f"node-{row.get('node')}") for rows in faults.values() for row in rows})


def run_federation(grid: Grid, context: Context, overrides: Mapping[str, Any] | None = None) -> Path:
    """The federated training loop; returns the bundle directory."""
    cfg = FederationConfig.from_run_config(context.run_config, overrides)
    out = Path(cfg.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(out)  # one ServerApp per run directory
    try:
        return _run_rounds(grid, cfg, out)
    finally:
        lock.close()


def _run_rounds(grid: Grid, cfg: FederationConfig, out: Path) -> Path:
    """Initial evaluation, then rounds until num-server-rounds or the run timeout; returns the bundle directory."""
    run = Run(cfg, grid, build_strategy(cfg), RunClock(float(cfg.run_timeout)))
    start, arrays, best, meta, fresh = _start(cfg, out, run.strategy, config_fingerprint(cfg))
    run.declared = {str(k): int(v) for k, v in (meta.get("declared") or {}).items()}
    run.eval_grid = tuple(meta.get("eval_grid") or IDENTITY)  # type: ignore[assignment]
    if fresh and cfg.initial_eval:
        t0 = time.time()
        nodes = run.nodes()
        ev0, faults0 = _evaluate(run, 0, arrays, nodes)
        _advance_grid(run, ev0, meta)
        append_metrics(out, {"round": 0, "strategy": cfg.strategy, "pooled_val_auroc": ev0.pooled_auroc,
                             "pooled_val_auroc_bound": ev0.pooled_auroc_bound,
                             "val_n": ev0.n_examples, "per_site": ev0.per_site, "train_loss": None,
                             **faults0, "failed_sites": _failed_sites(faults0), "time_s": time.time() - t0})
    for rnd in range(start, cfg.num_server_rounds + 1):
        t0 = time.time()
        nodes = run.nodes() if not run.clock.expired() else []
        if not nodes:
            log.error("run timeout (run-timeout %.0f s) before round %d: stopping; the bundle holds the best "
                      "round so far (%s)", cfg.run_timeout, rnd, meta["best_round"])
            meta["stopped"] = f"run-timeout before round {rnd}"
            break
        res = _train_round(run, rnd, arrays, nodes)
        row: dict[str, Any] = {"round": rnd, "strategy": cfg.strategy, "status": "ok" if res.arrays else "failed",
                               "sampled": [run.book.name(n) for n in nodes], "train_sites": res.sites}
        faults = {k: list(v) for k, v in res.faults.items()}
        if res.arrays is None:
            log.error("round %d FAILED: %s; the global model stays as it was", rnd, res.reason)
            row.update(reason=res.reason, pooled_val_auroc=None, train_loss=None)
        else:
            arrays = res.arrays
            meta["train_sites"] = sorted(set(meta["train_sites"]) | set(res.sites))
            if res.epsilon:
                meta["epsilon"] = {**meta.get("epsilon", {}), **res.epsilon}
                row["epsilon"] = res.epsilon
            ev, eval_faults = _evaluate(run, rnd, arrays)
            for k, v in eval_faults.items():
                faults[k] = faults.get(k, []) + v
            if _better(ev.pooled_auroc, float(meta["best_auroc"]) if meta["best_auroc"] is not None else math.nan):
                meta.update(best_round=rnd, best_auroc=ev.pooled_auroc, best_grid=list(run.eval_grid),
                            best_counts=None if ev.pooled_counts is None else ev.pooled_counts.tolist())
                best = arrays
            row["eval_grid"] = list(run.eval_grid)
            _advance_grid(run, ev, meta)
            row.update(pooled_val_auroc=ev.pooled_auroc, pooled_val_auroc_bound=ev.pooled_auroc_bound,
                       val_n=ev.n_examples, per_site=ev.per_site,
                       train_loss=None if res.metrics is None else float(res.metrics.get(TRAIN_LOSS, math.nan)))
            if ev.test_counts is not None:
                row["pooled_test_auroc"] = safe_auroc(ev.test_counts)
        row.update(faults, failed_sites=_failed_sites(faults), time_s=time.time() - t0)
        append_metrics(out, row)
        meta["declared"] = dict(run.declared)
        save_checkpoint(out, rnd, _numpy(arrays), _numpy(best), strategy_state(run.strategy), meta)
        log.info("round %d done (%s): pooled val AUROC %s (best %s at round %s); failed/missing sites: %s; "
                 "checkpoint saved in %s", rnd, row["status"], row.get("pooled_val_auroc"), meta["best_auroc"],
                 meta["best_round"], ", ".join(row["failed_sites"]) or "none", out)
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
        grid_threshold = threshold_from_counts(counts_np, train_cfg.threshold_weight())
        val_metrics = val_metrics_from_counts(counts_np, grid_threshold)  # counts and threshold in grid units
        threshold = from_grid(grid_threshold, *(meta.get("best_grid") or IDENTITY))  # on the model's scores
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
