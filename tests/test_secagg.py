"""Secure aggregation (SecAgg+, server/secagg.py + client/secagg.py): the same train round with and without
it gives the same global model within the quantisation error; too few sites are refused with the numbers.

The Grid here delivers messages in process to the REAL ClientApps (our handlers, Flower's secaggplus_mod and
the adapter) and the REAL SecAggPlusWorkflow drives the protocol, so the test takes seconds (no Ray).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from client.app import make_client_app
from client.policy import open_policy  # emulated sites that approved this run; governance is tested elsewhere
from common.config import PrepConfig
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from server.app import round_config
from server.config import FederationConfig, config_json
from server.secagg import check_secagg_sites, secagg_train_round
from tests.cache_factory import make_cache

OVERRIDES = {"model-config": json.dumps({"use_image": False}), "prep-config": config_json(PrepConfig(shape=(32, 32, 32))),
             "train-config": json.dumps({"batch_size": 4}), "strategy": "fedavg"}


class InProcessGrid:
    """The Grid calls SecAggPlusWorkflow makes, answered by ClientApps in this process (one Context per node)."""

    def __init__(self, apps: dict[int, object], contexts: dict[int, Context]) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # set in a ServerApp process
        self.apps, self.contexts = apps, contexts
        self.run = SimpleNamespace(run_id=1)
        self.seen: list[Message] = []  # every reply the coordinator received

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001
        out = []
        for i, msg in enumerate(messages):
            md = Metadata(run_id=1, message_id=f"m{time.time_ns()}-{i}", src_node_id=0, dst_node_id=msg.metadata.dst_node_id,
                          reply_to_message_id="", group_id=msg.metadata.group_id, created_at=time.time(), ttl=3600.0,
                          message_type=msg.metadata.message_type)
            delivered = Message(content=copy.deepcopy(msg.content), metadata=md)  # as if serialised per node
            reply = self.apps[md.dst_node_id](delivered, self.contexts[md.dst_node_id])
            self.seen.append(reply)
            out.append(reply)
        return out


def _context(node: int, cache: Path) -> Context:
    return Context(run_id=1, node_id=node, node_config={"data-path": str(cache), "partition-id": node - 1},
                   state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("secagg")
    return {i + 1: make_cache(root, f"S{i}", n=12 + 4 * i, seed=i, signal="clinical") for i in range(3)}


def _cfg(**kw) -> FederationConfig:  # noqa: ANN003
    return FederationConfig.from_run_config({}, {**OVERRIDES, "min-nodes": 3, "num-server-rounds": 1, **kw})


def test_secagg_round_equals_fedavg_within_quantisation(caches: dict[int, Path]) -> None:
    from common.models import build_model
    import torch

    cfg = _cfg(secagg=True, **{"secagg-num-shares": 3, "secagg-threshold": 2, "secagg-max-weight": 50.0})
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model(cfg.model()).state_dict())
    config = round_config(cfg)
    # plain FedAvg: each site's own update, averaged by patients (what the coordinator would see in the clear)
    plain = make_client_app(OVERRIDES, policy=open_policy())
    updates, weights = [], []
    for node, cache in caches.items():
        md = Metadata(run_id=1, message_id=f"p{node}", src_node_id=0, dst_node_id=node, reply_to_message_id="",
                      group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
        rc = ConfigRecord({**dict(config), "server-round": 1})
        reply = plain(Message(content=RecordDict({ARRAYS: arrays, "config": rc}), metadata=md), _context(node, cache))
        assert not reply.has_error(), reply.error.reason
        updates.append(reply.content[ARRAYS].to_numpy_ndarrays())
        weights.append(int(reply.content[METRICS][NUM_EXAMPLES]))
    fedavg = [sum(w * u[j] for w, u in zip(weights, updates)) / sum(weights) for j in range(len(updates[0]))]
    # the same round under SecAgg+
    grid = InProcessGrid({n: make_client_app(OVERRIDES, policy=open_policy()) for n in caches},
                         {n: _context(n, c) for n, c in caches.items()})
    new, metrics, sites, refused, _ = secagg_train_round(grid, 1, arrays, config, cfg)
    got = new.to_numpy_ndarrays()
    err = max(float(np.abs(a - b).max()) for a, b in zip(got, fedavg))
    step = 2 * cfg.secagg_clip_range / cfg.secagg_quantization_range
    bound = len(caches) * step * cfg.secagg_max_weight / sum(weights)
    print(f"SecAgg+ vs FedAvg: max abs error {err:.3g} (bound {bound:.3g}, quantisation step {step:.3g})")
    assert err <= bound
    assert err > 0  # it really went through the quantised protocol
    assert int(metrics[NUM_EXAMPLES]) == sum(weights) and len(sites) == 3 and not refused
    # the coordinator never received any site's weights: the replies carried no arrays of model size
    for reply in grid.seen:
        assert not any(len(r) for r in reply.content.array_records.values())


def test_too_few_sites_refused_with_the_numbers(caches: dict[int, Path]) -> None:
    with pytest.raises(ValueError, match=r"at least 3 sites \(reconstruction threshold 3, shares 3\); only 2"):
        check_secagg_sites(2, threshold=3, num_shares=3)
    cfg = _cfg(secagg=True, **{"min-nodes": 1, "round-timeout": 1.0})
    one = InProcessGrid({1: make_client_app(OVERRIDES, policy=open_policy())}, {1: _context(1, caches[1])})
    with pytest.raises(ValueError, match=r"at least 2 sites .* only 1 connected"):
        secagg_train_round(one, 1, ArrayRecord(), round_config(cfg), cfg)


def test_strategies_that_need_each_update_are_refused_with_secagg() -> None:
    """SecAgg+ unmasks the FedAvg sum only: FedBN and the robust rules (trimmed mean, median) are refused by name."""
    from server.config import FederationConfig

    for strategy in ("fedbn", "fedmedian", "fedtrimmedavg"):
        with pytest.raises(ValueError, match=f"secagg = true .* got strategy '{strategy}'"):
            FederationConfig.from_run_config({}, {"secagg": True, "strategy": strategy})
    for strategy in ("fedavg", "fedprox", "fedadam", "fedyogi"):
        assert FederationConfig.from_run_config({}, {"secagg": True, "strategy": strategy}).secagg


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedavg"])
def test_server_optimiser_on_the_secure_aggregate_equals_it_on_the_updates(monkeypatch: pytest.MonkeyPatch,
                                                                          strategy: str) -> None:
    """Two rounds of FedAdam / FedYogi fed the FedAvg aggregate (all SecAgg+ unmasks) give exactly the model the
    same strategy computes from the individual updates (optimiser state included)."""
    from flwr.app import Array, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from server.config import FederationConfig
    from server.strategies import build_strategy, server_step

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    cfg = FederationConfig.from_run_config({}, {"strategy": strategy, "server-lr": 0.05})
    plain, secure = build_strategy(cfg), build_strategy(cfg)
    rng = np.random.default_rng(0)
    current = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    mine = dict(current)
    for rnd in (1, 2):
        updates = [({k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in current.items()}, n)
                   for n in (10, 30, 5)]
        replies = [Message(content=RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                                               "metrics": MetricRecord({NUM_EXAMPLES: n})}),
                           dst_node_id=i + 1, message_type=MessageType.TRAIN) for i, (u, n) in enumerate(updates)]
        if hasattr(plain, "current_arrays"):
            plain.current_arrays = dict(current)
        expected, _ = plain.aggregate_train(rnd, replies)
        fedavg = {k: sum(u[k] * n for u, n in updates) / 45.0 for k in current}
        got = server_step(secure, rnd, ArrayRecord({k: Array(v) for k, v in mine.items()}),
                          ArrayRecord({k: Array(v.astype(np.float32)) for k, v in fedavg.items()}), 45)
        for k in current:
            assert np.allclose(got[k].numpy(), expected[k].numpy(), atol=1e-6), (strategy, rnd, k)
        current = {k: expected[k].numpy() for k in current}
        mine = {k: got[k].numpy() for k in current}
