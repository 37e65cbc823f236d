"""Flower ClientApp: trains / evaluates the shared model on this site's cache (thin adapter).

The site's cache is named by the SuperNode (``--node-config 'data-path="/data/site"'``); in
simulation a partition-id -> cache map is injected with :func:`make_client_app`. The round config
is parsed into ``common.protocol.RoundConfig``, the hashes checked (``client.site``) and the site's
policy applied (``client.rules`` with ``client.policy.site_policy``) before torch is imported; a refusal
becomes an error reply with a code and a short reason free of data (``client.errors``), the details go
to the site's own log. The outermost mod (``client.audit``) records every instruction and reply in the
hash-chained audit log and turns ANY exception into a coded reply.
FedBN: norm-layer parameters stay in ``context.state`` and overwrite the incoming global ones.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import privacy
from client.audit import make_audit_mod
from client.local_state import check_finite_model, load_arrays, norm_state_path, save_arrays
from client.errors import error_reply
from client.policy import POLICY_FILE, SitePolicy, policy_inline, site_policy
from client.rules import EVALUATE, TRAIN, check_policy, count_request
from client.secagg import secagg_mod
from client.site import PARTITION_ID, SiteLocation, check_round, locate_site
from common.protocol import (
    ARRAYS,
    CONFIG,
    DELTA,
    EPSILON,
    LOCAL_NORM_STATE,
    LOSS,
    METRICS,
    N_NEG,
    N_POS,
    NUM_EXAMPLES,
    SITE,
    SITE_AUROC,
    SITE_NAME,
    TEST_PREFIX,
    TRAIN_LOSS,
    WITHHELD,
    ProtocolError,
    RoundConfig,
    SiteSettings,
    counts_to_lists,
)

log = logging.getLogger("fedpcr.client")


class _Round:
    """One message's settings, site and round config, checked (hashes) before anything heavy is loaded."""

    def __init__(self, msg: Message, context: Context, overrides: Mapping[str, Any],
                 sites: Mapping[int, tuple[str, str]] | None, kind: str) -> None:
        counts = count_request(context.state, kind)  # refused requests count too
        self.policy = site_policy(context)
        self.settings = SiteSettings.from_run_config(context.run_config, overrides)
        self.where: SiteLocation = locate_site(context.node_config, sites)
        self.rc = RoundConfig.from_dict(msg.content[CONFIG])
        prep_hash = check_round(self.settings, self.where, self.rc)
        check_policy(self.policy, self.settings, self.rc, kind, counts, prep_hash)
        from client import task  # torch from here on

        self.task = task
        self.model_cfg, self.train_cfg = self.settings.model(), self.settings.train()
        self.site = task.load_site(self.where.path, self.train_cfg.seed, self.train_cfg.val_fraction,
                                   self.train_cfg.test_fraction)
        self.name = self.where.name or self.site.cache.site

    def model(self, msg: Message, context: Context) -> Any:
        """The global model of the message (refused when non-finite), with this site's own norm layers under FedBN
        (from ``context.state``, else from the site's disk after a restart)."""
        arrays = self.task.decode_record(msg.content[ARRAYS], self.rc.update_encoding)
        check_finite_model(arrays)
        local = None
        if self.rc.local_norm and LOCAL_NORM_STATE in context.state.array_records:
            local = context.state[LOCAL_NORM_STATE]
        elif self.rc.local_norm:
            saved = load_arrays(norm_state_path(context.node_config, self.rc.model_hash))
            local = ArrayRecord({k: Array(v) for k, v in saved.items()}) if saved else None
        return self.task.model_from_arrays(self.model_cfg, self.train_cfg.seed, arrays, local)

    def reply(self, msg: Message, records: dict[str, Any]) -> Message:
        content = RecordDict({**records, SITE: ConfigRecord({SITE_NAME: self.name})})
        return Message(content=content, reply_to=msg)


def _guarded(fn: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Turn ANY exception into a coded error reply without data in its reason (details to the local log)."""

    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return fn(msg, context)
        except Exception as exc:  # noqa: BLE001 - a site never crashes out with its data in the text
            return error_reply(msg, exc)

    wrapper.__name__ = fn.__name__
    return wrapper


def _train(r: _Round, msg: Message, context: Context) -> Message:
    """Local epochs from the global weights; reply = new weights + patient count + mean loss."""
    model = r.model(msg, context)
    epochs = r.rc.local_epochs if r.rc.local_epochs is not None else r.settings.local_epochs
    lr = r.rc.lr if r.rc.lr is not None else r.train_cfg.lr
    train_cfg = r.train_cfg if lr == r.train_cfg.lr else dataclasses.replace(r.train_cfg, lr=lr)
    seed = r.train_cfg.seed * 100_003 + r.rc.server_round * 101 + int(context.node_config.get(PARTITION_ID, 0))
    dp = _dp_round(r, context, train_cfg, epochs)
    if dp is None:
        out = r.task.train_local(model, r.site, r.model_cfg, train_cfg, epochs, r.rc.proximal_mu, seed)
    else:  # DP-SGD with the site's accountant (client/privacy.py); refused before training when over budget
        plan, accountant = dp
        data = r.site.dataset("train", r.model_cfg, augment=train_cfg.augment, seed=seed)
        out = privacy.train_private(model, data, train_cfg, epochs, plan, accountant, seed)
        log.info("site %s round %d: DP-SGD epsilon spent %.3f of %.3f (delta %g)", r.name, r.rc.server_round,
                 out["epsilon"], plan.allowed_epsilon, plan.delta)
    if r.rc.local_norm:
        context.state[LOCAL_NORM_STATE] = r.task.local_norm_arrays(model)
        path = norm_state_path(context.node_config, r.rc.model_hash)
        if path is not None:  # survives a SuperNode restart
            save_arrays(path, dict(zip(context.state[LOCAL_NORM_STATE].keys(),
                                       context.state[LOCAL_NORM_STATE].to_numpy_ndarrays())))
    metrics = MetricRecord({NUM_EXAMPLES: out["n"], TRAIN_LOSS: out["loss"]})
    if dp is not None:
        metrics[EPSILON], metrics[DELTA] = float(out["epsilon"]), float(out["delta"])
    return r.reply(msg, {ARRAYS: r.task.arrays_from_model(model, r.rc.update_encoding), METRICS: metrics})


def _dp_round(r: _Round, context: Context, train_cfg: Any, epochs: int) -> tuple[Any, Any] | None:
    """(plan, accountant) when this round trains with DP (asked or required), budget checked; else None."""
    n_train = len(r.site.splits["train"])
    plan = privacy.plan_round(r.rc, r.policy.privacy, n_train, train_cfg.batch_size, epochs,
                              r.policy.training.max_rounds_per_run)
    if plan is None:
        return None
    if r.rc.proximal_mu > 0:
        raise ProtocolError("DP-SGD cannot apply the FedProx proximal term (not a per-patient gradient); "
                            "use fedavg with dp")
    accountant = privacy.SiteAccountant(privacy.run_state_dir(context.node_config, r.where.path, context.run_id))
    accountant.check(plan, r.name)
    return plan, accountant


def _evaluate(r: _Round, msg: Message, context: Context) -> Message:
    """Validation (and, when asked, test) counts, protected by the site's evaluation policy
    (client/private_eval.py): coarse score bins + noise, nothing below the minimum class size."""
    from client import private_eval
    from common.metrics import auroc
    from common.train import predict

    model = r.model(msg, context)
    policy = r.policy.evaluation
    secret = privacy.site_secret(privacy.run_state_dir(context.node_config, r.where.path, context.run_id))
    digest = private_eval.weights_digest(model.state_dict())
    metrics: dict[str, Any] = {}
    for split, prefix in (("val", ""), ("test", TEST_PREFIX)):
        if split == "test" and r.rc.eval_split != "test":
            continue
        labels, scores = predict(model, r.site.dataset(split, r.model_cfg), r.train_cfg)
        res = private_eval.protect(labels, scores, policy, private_eval.noise_seed(secret, digest, split),
                                   grid=r.rc.eval_grid())
        metrics.update({prefix + NUM_EXAMPLES: res.n, prefix + N_POS: res.n_pos, prefix + N_NEG: res.n_neg,
                        prefix + WITHHELD: int(res.withheld)})
        if split == "val":
            metrics[LOSS] = res.loss  # the validation loss only (test is for final reporting)
            if policy.share_site_auroc and not res.withheld:  # the site's opt-in: its own exact AUROC
                metrics[SITE_AUROC] = float(auroc(labels, scores))
        metrics.update(counts_to_lists(res.counts, prefix))
    return r.reply(msg, {METRICS: MetricRecord(metrics)})


def _policy_mod(policy: SitePolicy) -> Callable[[Message, Context, Callable], Message]:
    """Mod injecting a policy (simulation) as the inline ``policy-file`` node config site_policy() reads."""
    inline = policy_inline(policy)

    def policy_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        context.node_config[POLICY_FILE] = inline
        return call_next(msg, context)

    return policy_mod


def make_client_app(overrides: Mapping[str, Any] | None = None,
                    sites: Mapping[int, tuple[str, str]] | None = None,
                    audit_dir: str | None = None, policy: SitePolicy | None = None) -> ClientApp:
    """A ClientApp with injected run-config overrides, a partition-id -> (site, cache) map, an audit
    directory and a site policy (else the SuperNode's ``policy-file``; see ``client.policy.site_policy``).
    SecAgg+ train rounds go through Flower's mod (``client.secagg.secagg_mod``, after the site's own mods);
    plain rounds pass it untouched."""
    overrides = dict(overrides or {})
    sites = dict(sites) if sites is not None else None
    mods = [make_audit_mod(audit_dir)] + ([_policy_mod(policy)] if policy is not None else []) + [secagg_mod]
    app = ClientApp(mods=mods)

    @app.train()
    @_guarded
    def train(msg: Message, context: Context) -> Message:
        return _train(_Round(msg, context, overrides, sites, TRAIN), msg, context)

    @app.evaluate()
    @_guarded
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(_Round(msg, context, overrides, sites, EVALUATE), msg, context)

    return app


#: The app Flower loads (``[tool.flwr.app.components] clientapp = "client.app:app"``).
app = make_client_app()
