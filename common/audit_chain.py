"""The site audit log's format: hash-chained JSONL, its appender and ``fedpcr audit verify DIR``.

One owner of the format (Flower-free, torch-free). A log is ``DIR/audit-<node>.jsonl``: one JSON object
per line, each with ``seq`` (0, 1, ...), ``prev`` (the previous entry's ``hash``; GENESIS for the first)
and ``hash`` = sha256 of the entry's canonical JSON without ``hash``. ``DIR/audit-<node>.head`` holds the
last ``seq`` and ``hash`` so that deleting the LAST entry is detected too. Appending takes an exclusive
``flock`` (the SuperNode and its ClientApp processes share a log), writes one line and fsyncs, then
replaces the head file atomically. Editing, inserting or deleting any entry makes :func:`verify_log`
fail naming the entry.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

GENESIS = "0" * 64
LOG_GLOB = "audit-*.jsonl"


class AuditChainError(ValueError):
    """A log whose chain is broken; the message names the file and the entry (line, seq)."""


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: its JSON without ``hash``, keys sorted, no spaces."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 hex of :func:`canonical`."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def log_path(directory: str | Path, node: int | str) -> Path:
    """``DIR/audit-<node>.jsonl``."""
    return Path(directory) / f"audit-{node}.jsonl"


def head_path(log: Path) -> Path:
    """The head file next to a log."""
    return log.with_suffix(".head")


def _last_line(fh: Any) -> bytes:
    """The last non-empty line of an open binary file (read backwards from the end)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    block, data = 4096, b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        if data.rstrip(b"\n").count(b"\n") >= 1:
            break
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    return lines[-1] if lines else b""


def append_entry(log: str | Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Chain ``entry`` to the log's last entry, append it durably and return it (with seq/prev/hash)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            last = _last_line(fh)
            prev = json.loads(last) if last else None
            entry = {k: v for k, v in entry.items() if k not in ("seq", "prev", "hash")}
            entry["seq"] = prev["seq"] + 1 if prev else 0
            entry["prev"] = prev["hash"] if prev else GENESIS
            entry["hash"] = entry_hash(entry)
            fh.seek(0, os.SEEK_END)
            fh.write(json.dumps(entry, sort_keys=True, allow_nan=True).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            _write_head(log, entry)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return entry


def _write_head(log: Path, entry: dict[str, Any]) -> None:
    head = head_path(log)
    tmp = head.with_name(head.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, head)


def verify_log(log: str | Path) -> list[dict[str, Any]]:
    """All entries of one log after checking every hash, link and the head; AuditChainError naming the entry."""
    log = Path(log)
    entries: list[dict[str, Any]] = []
    prev_hash, seq = GENESIS, 0
    for lineno, line in enumerate(log.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{log.name} line {lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditChainError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or "hash" not in entry:
            raise AuditChainError(f"{where}: not an audit entry")
        if entry.get("seq") != seq:
            raise AuditChainError(f"{where}: entry seq {entry.get('seq')} where seq {seq} was expected "
                                  f"(entry {seq} deleted or entries reordered)")
        if entry_hash(entry) != entry["hash"]:
            raise AuditChainError(f"{where}: entry seq {seq} was edited (its hash does not match its content)")
        if entry.get("prev") != prev_hash:
            raise AuditChainError(f"{where}: entry seq {seq} does not chain to the previous entry "
                                  "(an entry before it was deleted or replaced)")
        entries.append(entry)
        prev_hash, seq = entry["hash"], seq + 1
    head = head_path(log)
    if head.exists():
        want = json.loads(head.read_text())
        if want.get("seq") != seq - 1 or want.get("hash") != prev_hash:
            raise AuditChainError(f"{log.name}: the log ends at seq {seq - 1} but its head records seq "
                                  f"{want.get('seq')}: entry seq {want.get('seq')} (the last) was deleted or edited")
    elif entries:
        raise AuditChainError(f"{log.name}: head file {head.name} missing")
    return entries


def read_entries(directory: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every verified entry of every log in ``directory`` (optionally only one ``kind``)."""
    out: list[dict[str, Any]] = []
    for log in sorted(Path(directory).glob(LOG_GLOB)):
        out += [e for e in verify_log(log) if kind is None or e.get("kind") == kind]
    return out


def _array_bytes(entry: dict[str, Any]) -> int:
    return sum(int(a.get("bytes", 0)) for rec in entry.get("arrays", {}).values() for a in rec.values())


def _metric_text(value: Any) -> str:
    return f"list[{len(value)}]" if isinstance(value, list) else repr(value)


def summarize(entries: Iterable[dict[str, Any]]) -> list[str]:
    """What left the site, per run and per round: array bytes, metrics sent, refusals (one line each)."""
    per: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if e.get("kind") in ("reply", "app"):
            per[(e.get("run_id"), e.get("server_round"))].append(e)
    lines = []
    for (run, rnd), items in sorted(per.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] is not None, kv[0][1] or 0)):
        for e in items:
            where = f"run {run} round {rnd if rnd is not None else '-'} {e.get('message_type') or e.get('kind')}:"
            if e.get("error"):
                lines.append(f"{where} REFUSED code {e['error']['code']}: {e['error']['reason']}")
            elif e.get("kind") == "app":
                lines.append(f"{where} app {e.get('fab_hash')} {'approved' if e.get('approved') else 'REFUSED'}")
            else:
                metrics = {k: v for rec in e.get("metrics", {}).values() for k, v in rec.items()}
                shown = ", ".join(f"{k}={_metric_text(v)}" for k, v in sorted(metrics.items()))
                lines.append(f"{where} {_array_bytes(e)} array bytes; metrics {shown or '(none)'}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``fedpcr audit verify DIR``: check every chain in DIR, print what left the site; exit 1 when broken."""
    p = argparse.ArgumentParser(prog="fedpcr audit", description="Site audit log tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check the hash chain(s) in DIR and print what left the site")
    v.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    logs = sorted(args.dir.glob(LOG_GLOB))
    if not logs:
        print(f"fedpcr audit: no audit logs ({LOG_GLOB}) in {args.dir}")
        return 1
    broken = 0
    for log in logs:
        try:
            entries = verify_log(log)
        except AuditChainError as exc:
            print(f"FAILED {exc}")
            broken += 1
            continue
        print(f"OK {log.name}: {len(entries)} entries, chain intact")
        for line in summarize(entries):
            print(f"  {line}")
    return 1 if broken else 0
