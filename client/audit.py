"""The site's audit log: every reply a hospital sends, as one JSON line (what left the site)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import Context, Message

from common.protocol import CONFIG, SERVER_ROUND

#: Node-config key naming the audit directory (``--node-config 'audit-dir="..."'``).
AUDIT_DIR = "audit-dir"


def audit_record(msg: Message, reply: Message, node_id: int) -> dict[str, Any]:
    """What a reply carries, as JSON: metric/config values in full, arrays by name, dtype, shape, sha256."""
    rec: dict[str, Any] = {"time": time.time(), "node_id": int(node_id), "message_type": msg.metadata.message_type,
                           "server_round": None, "error": None, "arrays": {}, "metrics": {}, "configs": {}}
    if msg.has_content() and CONFIG in msg.content.config_records:
        rec["server_round"] = msg.content[CONFIG].get(SERVER_ROUND)
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


def make_audit_mod(audit_dir: str | None = None) -> Callable[[Message, Context, Callable], Message]:
    """Flower mod that appends every outgoing reply to ``<dir>/replies-<node>.jsonl`` (the site's audit log).

    The directory is ``audit_dir`` or the SuperNode's ``--node-config 'audit-dir="..."'``; no directory, no log.
    """

    def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        target = audit_dir or context.node_config.get(AUDIT_DIR)
        if target:
            path = Path(str(target))
            path.mkdir(parents=True, exist_ok=True)
            with (path / f"replies-{context.node_id}.jsonl").open("a") as fh:
                fh.write(json.dumps(audit_record(msg, reply, context.node_id)) + "\n")
        return reply

    return audit_mod
