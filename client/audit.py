"""The site's audit log, on by default: every instruction received and every reply sent, hash-chained.

Entries (format and chain: ``common.audit_chain``; check with ``fedpcr audit verify DIR``):
``instruction`` (run, round, message type, the round config in full, the received arrays by name,
dtype, shape, sha256, bytes and their digest = the model hash), ``reply`` (arrays the same way, every
metric and config value in full, or the error code + reason), ``app`` (the FAB hash the SuperNode was
asked to run and whether the site's policy approved it; written by ``client.approval``).
The directory is the SuperNode's ``audit-dir`` node config, else ``<data-path>/audit``; a simulation
without either keeps no log unless ``make_audit_mod(audit_dir)`` names one. A log that cannot be
written means nothing is sent (error AUDIT_FAILED): nothing leaves the site unrecorded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from flwr.app import Context, Error, Message

from client.errors import error_reply
from common.audit_chain import append_entry, log_path
from common.protocol import AUDIT_FAILED, CONFIG, SERVER_ROUND

log = logging.getLogger("fedpcr.client")

#: Node-config key naming the audit directory (``flwr-client --audit-dir``).
AUDIT_DIR = "audit-dir"
#: Sub-directory of the site cache used when no audit directory is named.
DEFAULT_SUBDIR = "audit"


def default_audit_dir(data_path: str | Path) -> Path:
    """Where a site's audit log lives unless it names another place: ``<data-path>/audit``."""
    return Path(data_path) / DEFAULT_SUBDIR


def audit_dir_of(node_config: Mapping[str, Any], injected: str | Path | None = None) -> Path | None:
    """The audit directory for this node (injected > ``audit-dir`` > ``<data-path>/audit`` > none)."""
    if injected:
        return Path(injected)
    if node_config.get(AUDIT_DIR):
        return Path(str(node_config[AUDIT_DIR]))
    if node_config.get("data-path"):
        return default_audit_dir(str(node_config["data-path"]))
    return None


def _arrays(records: Any) -> dict[str, dict[str, Any]]:
    """ArrayRecords by name -> {array name: dtype, shape, sha256, bytes}."""
    return {name: {k: {"dtype": a.dtype, "shape": list(a.shape), "sha256": hashlib.sha256(a.data).hexdigest(),
                       "bytes": len(a.data)} for k, a in arrays.items()}
            for name, arrays in records.items()}


def model_digest(arrays: dict[str, dict[str, Any]]) -> str | None:
    """One sha256 over the arrays' names and hashes (identifies the model a message carried)."""
    if not arrays:
        return None
    text = "".join(f"{rec}/{k}:{a['sha256']};" for rec, items in sorted(arrays.items()) for k, a in items.items())
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """A config value as JSON: bytes (e.g. SecAgg+ public keys, shares) as hex, lists element by element."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _configs(records: Any) -> dict[str, dict[str, Any]]:
    return {name: {k: _plain(v) for k, v in config.items()}
            for name, config in records.items()}


def _base(kind: str, msg: Message, node_id: int) -> dict[str, Any]:
    rnd = None
    if msg.has_content() and CONFIG in msg.content.config_records:
        rnd = msg.content[CONFIG].get(SERVER_ROUND)
    return {"kind": kind, "time": time.time(), "node_id": int(node_id), "run_id": int(msg.metadata.run_id),
            "message_type": str(msg.metadata.message_type), "server_round": rnd}


def instruction_record(msg: Message, node_id: int) -> dict[str, Any]:
    """What the coordinator asked: message type, round, config in full, arrays received and the model hash."""
    rec = _base("instruction", msg, node_id)
    rec["message_id"] = msg.metadata.message_id
    if msg.has_content():
        rec["arrays"] = _arrays(msg.content.array_records)
        rec["model_hash"] = model_digest(rec["arrays"])
        rec["configs"] = _configs(msg.content.config_records)
        rec["metrics"] = {name: dict(m) for name, m in msg.content.metric_records.items()}
    return rec


def audit_record(msg: Message, reply: Message, node_id: int) -> dict[str, Any]:
    """What a reply carries: arrays by name, dtype, shape, sha256, bytes; metric/config values in full."""
    rec = _base("reply", msg, node_id)
    rec.update({"error": None, "arrays": {}, "metrics": {}, "configs": {}})
    if reply.has_error():
        rec["error"] = {"code": int(reply.error.code), "reason": reply.error.reason}
        return rec
    rec["arrays"] = _arrays(reply.content.array_records)
    rec["metrics"] = {name: dict(m) for name, m in reply.content.metric_records.items()}
    rec["configs"] = _configs(reply.content.config_records)
    return rec


def _audit_failed(msg: Message, exc: BaseException) -> Message:
    log.error("audit log not writable (%s: %s): nothing is sent for this %s", type(exc).__name__, exc,
              msg.metadata.message_type)
    return Message(error=Error(code=AUDIT_FAILED, reason="fedpcr: site could not write its audit log; nothing sent"),
                   reply_to=msg)


def make_audit_mod(audit_dir: str | Path | None = None) -> Callable[[Message, Context, Callable], Message]:
    """Flower mod (outermost): audit the instruction, run the app (any exception -> coded error reply),
    audit the reply. The log is ``<dir>/audit-<node>.jsonl`` (see :func:`audit_dir_of`)."""

    def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        target = audit_dir_of(context.node_config, audit_dir)
        path = log_path(target, context.node_id) if target is not None else None
        if path is not None:
            try:
                append_entry(path, instruction_record(msg, context.node_id))
            except Exception as exc:  # noqa: BLE001 - unrecordable: answer without running anything
                return _audit_failed(msg, exc)
        try:
            reply = call_next(msg, context)
        except Exception as exc:  # noqa: BLE001 - the catch-all: nothing escapes with its text
            reply = error_reply(msg, exc)
        if path is not None:
            try:
                append_entry(path, audit_record(msg, reply, context.node_id))
            except Exception as exc:  # noqa: BLE001
                return _audit_failed(msg, exc)
        return reply

    return audit_mod
