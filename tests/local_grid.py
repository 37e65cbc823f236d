"""An in-process Flower Grid for fault tests: real flwr Messages, the real ClientApp and real strategies,
no SuperLink. Each node calls ``client.app.make_client_app()`` with its own Context (as a SuperNode
would); ``faults[site](reply, msg) -> reply | None`` rewrites a site's reply (poison, malformed) or drops
it (None = the site never answered); ``offline`` hides nodes from ``get_node_ids`` and from delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Fault = Callable[[Message, Message], Message | None]


class LocalGrid(Grid):
    """Sites by name; node ids 101, 102, ... in the order given."""

    def __init__(self, sites: Mapping[str, Path], run_config: Mapping[str, Any],
                 faults: Mapping[str, Fault] | None = None, state_root: Path | None = None) -> None:
        from client.app import make_client_app
        from client.policy import open_policy

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        # These emulated hospitals approved the run (the simulation's open policy); governance has its own tests.
        self.app = make_client_app(policy=open_policy())
        self.run_config = dict(run_config)
        self.nodes: dict[int, tuple[str, Context]] = {}
        for i, (name, path) in enumerate(sites.items()):
            node_config = {"data-path": str(path), "site-name": name}
            if state_root is not None:
                node_config["state-dir"] = str(Path(state_root) / name)
            ctx = Context(run_id=1, node_id=101 + i, node_config=node_config, state=RecordDict(),
                          run_config=self.run_config)
            self.nodes[101 + i] = (name, ctx)
        self.faults = dict(faults or {})
        self.offline: set[int] = set()
        self.sent: list[tuple[int, str, int]] = []  # (node, message type, server round)

    def node_of(self, site: str) -> int:
        """The node id serving ``site``."""
        return next(n for n, (name, _) in self.nodes.items() if name == site)

    def set_run(self, run: Any) -> None:  # noqa: D102 - not used in-process
        pass

    @property
    def run(self) -> Any:  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        """Online nodes."""
        return [n for n in self.nodes if n not in self.offline]

    def get_nodes(self) -> list[Any]:  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> list[str]:  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Deliver each message to its node's ClientApp; apply the site's fault to the reply."""
        replies = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            if node in self.offline or node not in self.nodes:
                continue
            name, ctx = self.nodes[node]
            self.sent.append((node, msg.metadata.message_type, int(msg.content["config"]["server-round"])))
            reply = self.app(msg, ctx)
            fault = self.faults.get(name)
            reply = fault(reply, msg) if fault is not None else reply
            if reply is not None:
                replies.append(reply)
        return replies


def scale_arrays(factor: float) -> Fault:
    """A poisoned site: its train update multiplied by ``factor``."""
    return _map_arrays(lambda v: (v * factor).astype(v.dtype))


def nan_arrays() -> Fault:
    """A poisoned site: its train update full of NaN."""
    return _map_arrays(lambda v: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v)


def _map_arrays(fn: Callable[[np.ndarray], np.ndarray]) -> Fault:
    def fault(reply: Message, msg: Message) -> Message:
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        rec = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord({k: Array(fn(np.asarray(rec[k].numpy()))) for k in rec.keys()})
        return reply

    return fault
