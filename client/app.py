"""Flower ClientApp: trains / evaluates the shared model on this site's cache (thin adapter).

The site's cache is named by the SuperNode (``--node-config 'data-path="/data/site"'``); in
simulation a partition-id -> cache map is injected with :func:`make_client_app`. A site whose
preprocessing hash or model hash differs from the server's refuses with an error reply naming both.
FedBN: norm-layer parameters stay in ``context.state`` and overwrite the incoming global ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.aggregation import SITE_RECORD, counts_to_metrics
from server.config import FederationConfig

log = logging.getLogger("fedpcr.client")

#: Error code of a refused round (hash mismatch, missing data); the reason text says why.
REFUSED = 4100
LOCAL_NORM_KEY = "fedpcr-local-norm"


class SiteRefusal(Exception):
    """This site will not take part in the round (the message is sent to the server)."""


def _site(context: Context, sites: Mapping[int, tuple[str, str]] | None) -> tuple[str, str]:
    """(site name, cache path) from the node config, or from the injected simulation map."""
    nc = context.node_config
    if "data-path" in nc:
        path = str(nc["data-path"])
        name = str(nc.get("site-name", "")) or ""
        return name, path
    if sites is not None and "partition-id" in nc:
        pid = int(nc["partition-id"])
        if pid not in sites:
            raise SiteRefusal(f"no site cache configured for partition {pid}")
        return sites[pid]
    raise SiteRefusal("no site data: start the SuperNode with --node-config 'data-path=\"/path/to/cache\"'")


def cache_prep_hash(path: str) -> str:
    """The prep hash recorded in a site cache's ``prep_config.json`` (cheap: no data or torch import)."""
    cfg = Path(path) / "prep_config.json"
    try:
        return str(json.loads(cfg.read_text())["hash"])
    except FileNotFoundError:
        raise SiteRefusal(f"site cache file missing: {cfg}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SiteRefusal(f"cannot read the prep hash from {cfg}: {exc}") from exc


class _Runtime:
    """Per-run settings resolved from run config + injected overrides; checks hashes before loading data."""

    def __init__(self, context: Context, overrides: Mapping[str, Any] | None,
                 sites: Mapping[int, tuple[str, str]] | None) -> None:
        self.fed = FederationConfig.from_run_config(context.run_config, overrides)
        self.model_cfg = self.fed.model()
        self.train_cfg = self.fed.train()
        self.site_name, self.path = _site(context, sites)
        self.site = None

    def check(self, config: ConfigRecord) -> None:
        """Refuse when the server's prep/model hash differs from this site's (before any heavy import)."""
        mine_prep, mine_model = cache_prep_hash(self.path), self.model_cfg.hash()
        name = self.site_name or Path(self.path).name
        server_prep = str(config.get("prep-hash", ""))
        server_model = str(config.get("model-hash", ""))
        if server_prep != mine_prep:
            raise SiteRefusal(f"site {name} refuses: preprocessing hash mismatch: server prep-hash "
                              f"{server_prep or '(none)'} != site cache prep-hash {mine_prep}; re-prepare the "
                              f"site's data with the federation's PrepConfig")
        if server_model != mine_model:
            raise SiteRefusal(f"site {name} refuses: model hash mismatch: server model-hash "
                              f"{server_model or '(none)'} != site model-hash {mine_model}")
        from client import task

        self.site = task.load_site(self.path, self.train_cfg.seed, self.train_cfg.val_fraction,
                                   self.train_cfg.test_fraction)
        self.site_name = self.site_name or self.site.cache.site

    def model_for(self, msg: Message, context: Context, local_norm: bool):
        from client import task

        model = task.new_model(self.model_cfg, self.train_cfg.seed)
        arrays = task.arrays_to_numpy(msg.content["arrays"])
        if local_norm and LOCAL_NORM_KEY in context.state.array_records:
            kept = task.arrays_to_numpy(context.state[LOCAL_NORM_KEY])
            arrays.update({k: v for k, v in kept.items() if k in arrays})
        task.load_arrays(model, arrays)
        return model


def _reply(msg: Message, records: dict[str, Any], site_name: str) -> Message:
    content = RecordDict({**records, SITE_RECORD: ConfigRecord({"name": site_name})})
    return Message(content=content, reply_to=msg)


def _guarded(fn: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Turn a refusal into an error reply that the server logs (instead of a crash)."""

    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return fn(msg, context)
        except (SiteRefusal, FileNotFoundError, ValueError) as exc:
            log.error("%s", exc)
            return Message(error=Error(code=REFUSED, reason=f"fedpcr: {exc}"), reply_to=msg)

    wrapper.__name__ = fn.__name__
    return wrapper


def audit_record(msg: Message, reply: Message, node_id: int) -> dict[str, Any]:
    """What a reply carries, as JSON: metric/config values in full, arrays by name, dtype, shape, sha256."""
    rec: dict[str, Any] = {"time": time.time(), "node_id": int(node_id), "message_type": msg.metadata.message_type,
                           "server_round": None, "error": None, "arrays": {}, "metrics": {}, "configs": {}}
    if msg.has_content() and "config" in msg.content.config_records:
        rec["server_round"] = msg.content["config"].get("server-round")
    if reply.has_error():
        rec["error"] = {"code": reply.error.code, "reason": reply.error.reason}
        return rec
    for name, arrays in reply.content.array_records.items():
        rec["arrays"][name] = {k: {"dtype": a.dtype, "shape": list(a.shape),
                                   "sha256": hashlib.sha256(a.data).hexdigest()} for k, a in arrays.items()}
    for name, metrics in reply.content.metric_records.items():
        rec["metrics"][name] = dict(metrics)
    for name, config in reply.content.config_records.items():
        rec["configs"][name] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in config.items()}
    return rec


def make_audit_mod(audit_dir: str | None = None):
    """Flower mod that appends every outgoing reply to ``<dir>/replies-<node>.jsonl`` (the site's audit log).

    The directory is ``audit_dir`` or the SuperNode's ``--node-config 'audit-dir="..."'``; no directory, no log.
    """

    def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        target = audit_dir or context.node_config.get("audit-dir")
        if target:
            path = Path(str(target))
            path.mkdir(parents=True, exist_ok=True)
            with (path / f"replies-{context.node_id}.jsonl").open("a") as fh:
                fh.write(json.dumps(audit_record(msg, reply, context.node_id)) + "\n")
        return reply

    return audit_mod


def make_client_app(overrides: Mapping[str, Any] | None = None,
                    sites: Mapping[int, tuple[str, str]] | None = None,
                    audit_dir: str | None = None) -> ClientApp:
    """A ClientApp with injected run-config overrides, a partition-id -> (site, cache) map and an audit log."""
    overrides = dict(overrides or {})
    sites = dict(sites) if sites is not None else None
    app = ClientApp(mods=[make_audit_mod(audit_dir)])

    @app.train()
    @_guarded
    def train(msg: Message, context: Context) -> Message:
        rt = _Runtime(context, overrides, sites)
        config = msg.content["config"]
        rt.check(config)
        local_norm = bool(config.get("local-norm", False))
        model = rt.model_for(msg, context, local_norm)
        rnd = int(config.get("server-round", 0))
        epochs = int(config.get("local-epochs", rt.fed.local_epochs))
        mu = float(config.get("proximal-mu", config.get("prox-mu", 0.0)))
        lr = float(config.get("lr", rt.train_cfg.lr))
        train_cfg = rt.train_cfg if lr == rt.train_cfg.lr else _with_lr(rt.train_cfg, lr)
        seed = rt.train_cfg.seed * 100_003 + rnd * 101 + int(context.node_config.get("partition-id", 0))
        from client import task

        out = task.train_local(model, rt.site, rt.model_cfg, train_cfg, epochs, mu, seed)
        arrays = task.arrays_from_model(model)
        if local_norm:
            keys = task.norm_keys(model)
            context.state[LOCAL_NORM_KEY] = ArrayRecord({k: arrays[k] for k in arrays if k in keys})
        metrics = MetricRecord({"num-examples": out["n"], "train-loss": out["loss"]})
        return _reply(msg, {"arrays": arrays, "metrics": metrics}, rt.site_name)

    @app.evaluate()
    @_guarded
    def evaluate(msg: Message, context: Context) -> Message:
        rt = _Runtime(context, overrides, sites)
        config = msg.content["config"]
        rt.check(config)
        model = rt.model_for(msg, context, bool(config.get("local-norm", False)))
        from client import task

        val = task.evaluate_local(model, rt.site, "val", rt.model_cfg, rt.train_cfg)
        metrics: dict[str, Any] = {"num-examples": val["n"], "n-pos": val["n_pos"], "n-neg": val["n_neg"],
                                   "loss": val["loss"], **counts_to_metrics(val["counts"])}
        if str(config.get("eval-split", "val")) == "test":
            test = task.evaluate_local(model, rt.site, "test", rt.model_cfg, rt.train_cfg)
            metrics.update({"test-num-examples": test["n"], "test-n-pos": test["n_pos"],
                            "test-n-neg": test["n_neg"], **counts_to_metrics(test["counts"], "test-")})
        return _reply(msg, {"metrics": MetricRecord(metrics)}, rt.site_name)

    return app


def _with_lr(cfg, lr: float):
    import dataclasses

    return dataclasses.replace(cfg, lr=lr)


#: The app Flower loads (``[tool.flwr.app.components] clientapp = "client.app:app"``).
app = make_client_app()
