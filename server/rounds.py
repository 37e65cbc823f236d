"""Round policy: which nodes a round uses, how long it waits, and who was missing (never waits forever).

Flower's strategies sample with ``sample_nodes``, which loops until ``min_available_nodes`` are
connected, without a bound. Here the server decides instead: :func:`wait_for_nodes` waits for
``min-nodes`` (bounded by ``node-wait`` after the first round and always by the whole-run deadline)
and hands the strategy a :class:`NodeView` holding only those nodes, so the strategy's own sampling
never blocks. :func:`exchange` sends the round's messages and waits at most the round timeout (or
what is left of the run). A node that went away answers with Flower's NODE_UNAVAILABLE error once the
SuperLink notices (heartbeat) or not at all; either way it is recorded as missing or failed and the
round goes on. A site that reconnects gets a new node id and is sampled again from the next round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger("flwr")


@dataclass
class RunClock:
    """The whole-run deadline (``run-timeout`` seconds after this process started the run; 0 = none)."""

    run_timeout: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left (inf without a run timeout)."""
        if self.run_timeout <= 0:
            return float("inf")
        return self.started + self.run_timeout - time.monotonic()

    def expired(self) -> bool:
        """Whether the run is out of time."""
        return self.left() <= 0


class NodeView:
    """A Grid whose ``get_node_ids`` returns a fixed node list (what the strategy may sample); the rest delegates."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._nodes = list(node_ids)

    def get_node_ids(self) -> list[int]:
        """The nodes chosen for this round."""
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def wait_for_nodes(grid: Grid, want: int, enough: int, patience: float, clock: RunClock,
                   poll: float = 1.0) -> list[int]:
    """Connected node ids once ``want`` are connected, or once ``patience`` s passed with at least ``enough``.

    Returns ``[]`` when the run deadline passes first. ``patience`` < 0 means: wait for ``want`` until the deadline.
    """
    t0, last_log = time.monotonic(), -1e9
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        waited = time.monotonic() - t0
        if len(nodes) >= want or (patience >= 0 and waited >= patience and len(nodes) >= enough):
            return nodes
        if clock.left() <= 0:
            log.error("run timeout: only %d node(s) connected (need %d to start a round, %d at least)",
                      len(nodes), want, enough)
            return []
        if time.monotonic() - last_log > 30:
            log.info("waiting for nodes: %d connected (want %d; a round starts with >= %d after %.0f s)",
                     len(nodes), want, enough, max(patience, 0))
            last_log = time.monotonic()
        time.sleep(min(poll, max(clock.left(), 0.01)))


def exchange(grid: Grid, messages: Iterable[Message], round_timeout: float, clock: RunClock) -> list[Message]:
    """Send the round's messages; replies that came back within the round timeout (or the run's time left)."""
    messages = list(messages)
    if not messages:
        return []
    timeout = max(1.0, min(float(round_timeout), clock.left()))
    return list(grid.send_and_receive(messages=messages, timeout=timeout))


def missing_nodes(sent: Iterable[Message], replies: Iterable[Message]) -> list[int]:
    """Destination nodes of ``sent`` that did not answer at all."""
    answered = {int(m.metadata.src_node_id) for m in replies}
    return sorted({int(m.metadata.dst_node_id) for m in sent} - answered)


def node_failures(replies: Iterable[Message]) -> list[int]:
    """Nodes whose reply is an error (refusal, crash, NODE_UNAVAILABLE)."""
    return sorted(int(m.metadata.src_node_id) for m in replies if m.has_error())


@dataclass
class SiteBook:
    """Node id -> site label, learnt from replies, so a missing node is reported by its site name."""

    names: dict[int, str] = field(default_factory=dict)

    def learn(self, node: int, site: str) -> None:
        """Remember the label a node replied with."""
        if not site.startswith("node-"):
            self.names[int(node)] = site

    def name(self, node: int) -> str:
        """The node's site label, else ``node-<id>``."""
        return self.names.get(int(node), f"node-{int(node)}")

    def rows(self, nodes: Iterable[int], phase: str) -> list[dict[str, Any]]:
        """metrics.jsonl rows for missing nodes."""
        return [{"node": int(n), "site": self.name(n), "phase": phase} for n in nodes]
