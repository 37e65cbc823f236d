"""Flower ClientApp: trains / evaluates the shared model on this site's cache (thin adapter).

The site's cache is named by the SuperNode (``--node-config 'data-path="/data/site"'``); in
simulation a partition-id -> cache map is injected with :func:`make_client_app`. The round config
is parsed into ``common.protocol.RoundConfig`` and the hashes checked (``client.site``) before torch
is imported; a refusal becomes an error reply (``common.protocol`` error codes) naming the reason.
FedBN: norm-layer parameters stay in ``context.state`` and overwrite the incoming global ones.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit import make_audit_mod
from client.site import PARTITION_ID, SiteLocation, SiteRefusal, check_round, locate_site
from common.protocol import (
    ARRAYS,
    CONFIG,
    LOCAL_NORM_STATE,
    LOSS,
    METRICS,
    N_NEG,
    N_POS,
    NUM_EXAMPLES,
    REFUSED,
    SITE,
    SITE_NAME,
    TEST_PREFIX,
    TRAIN_LOSS,
    ProtocolError,
    RoundConfig,
    SiteSettings,
    counts_to_lists,
)

log = logging.getLogger("fedpcr.client")


class _Round:
    """One message's settings, site and round config, checked (hashes) before anything heavy is loaded."""

    def __init__(self, msg: Message, context: Context, overrides: Mapping[str, Any],
                 sites: Mapping[int, tuple[str, str]] | None) -> None:
        self.settings = SiteSettings.from_run_config(context.run_config, overrides)
        self.where: SiteLocation = locate_site(context.node_config, sites)
        self.rc = RoundConfig.from_dict(msg.content[CONFIG])
        check_round(self.settings, self.where, self.rc)
        from client import task  # torch from here on

        self.task = task
        self.model_cfg, self.train_cfg = self.settings.model(), self.settings.train()
        self.site = task.load_site(self.where.path, self.train_cfg.seed, self.train_cfg.val_fraction,
                                   self.train_cfg.test_fraction)
        self.name = self.where.name or self.site.cache.site

    def model(self, msg: Message, context: Context) -> Any:
        """The global model of the message, with this site's own norm layers under FedBN."""
        local = None
        if self.rc.local_norm and LOCAL_NORM_STATE in context.state.array_records:
            local = context.state[LOCAL_NORM_STATE]
        arrays = self.task.decode_record(msg.content[ARRAYS], self.rc.update_encoding)
        return self.task.model_from_arrays(self.model_cfg, self.train_cfg.seed, arrays, local)

    def reply(self, msg: Message, records: dict[str, Any]) -> Message:
        content = RecordDict({**records, SITE: ConfigRecord({SITE_NAME: self.name})})
        return Message(content=content, reply_to=msg)


def _guarded(fn: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Turn a refusal into an error reply that the server logs (instead of a crash)."""

    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return fn(msg, context)
        except (SiteRefusal, ProtocolError) as exc:
            log.error("%s", exc)
            return Message(error=Error(code=exc.code, reason=f"fedpcr: {exc}"), reply_to=msg)
        except (FileNotFoundError, ValueError) as exc:
            log.error("%s", exc)
            return Message(error=Error(code=REFUSED, reason=f"fedpcr: {exc}"), reply_to=msg)

    wrapper.__name__ = fn.__name__
    return wrapper


def _train(r: _Round, msg: Message, context: Context) -> Message:
    """Local epochs from the global weights; reply = new weights + patient count + mean loss."""
    model = r.model(msg, context)
    epochs = r.rc.local_epochs if r.rc.local_epochs is not None else r.settings.local_epochs
    lr = r.rc.lr if r.rc.lr is not None else r.train_cfg.lr
    train_cfg = r.train_cfg if lr == r.train_cfg.lr else dataclasses.replace(r.train_cfg, lr=lr)
    seed = r.train_cfg.seed * 100_003 + r.rc.server_round * 101 + int(context.node_config.get(PARTITION_ID, 0))
    out = r.task.train_local(model, r.site, r.model_cfg, train_cfg, epochs, r.rc.proximal_mu, seed)
    if r.rc.local_norm:
        context.state[LOCAL_NORM_STATE] = r.task.local_norm_arrays(model)
    metrics = MetricRecord({NUM_EXAMPLES: out["n"], TRAIN_LOSS: out["loss"]})
    return r.reply(msg, {ARRAYS: r.task.arrays_from_model(model, r.rc.update_encoding), METRICS: metrics})


def _evaluate(r: _Round, msg: Message, context: Context) -> Message:
    """Validation (and, when asked, test) counts on the shared threshold grid; nothing per patient."""
    model = r.model(msg, context)
    metrics: dict[str, Any] = {}
    for split, prefix in (("val", ""), ("test", TEST_PREFIX)):
        if split == "test" and r.rc.eval_split != "test":
            continue
        res = r.task.evaluate_local(model, r.site, split, r.model_cfg, r.train_cfg)
        metrics.update({prefix + NUM_EXAMPLES: res["n"], prefix + N_POS: res["n_pos"], prefix + N_NEG: res["n_neg"]})
        if split == "val":
            metrics[LOSS] = res["loss"]  # the validation loss only (test is for final reporting)
        metrics.update(counts_to_lists(res["counts"], prefix))
    return r.reply(msg, {METRICS: MetricRecord(metrics)})


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
        return _train(_Round(msg, context, overrides, sites), msg, context)

    @app.evaluate()
    @_guarded
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(_Round(msg, context, overrides, sites), msg, context)

    return app


#: The app Flower loads (``[tool.flwr.app.components] clientapp = "client.app:app"``).
app = make_client_app()
