"""Only approved code runs: the SuperNode refuses an app bundle (FAB) whose sha256 the site has not approved.

``python -m client.approval --policy FILE [--audit-dir DIR] -- <flower-supernode arguments>`` runs
Flower's own ``flower-supernode`` with one change: the FAB it fetches for a new run is hashed
(sha256 of the FAB bytes, the same hash ``flwr build`` / ``flwr run`` give it) and compared with the
policy's ``code.app_hashes`` BEFORE Flower stores it or starts a ClientApp from it. A bundle that differs
by one byte gets an error reply (APP_NOT_APPROVED) and is never executed; every decision is written to
the site's audit log (``app`` entries). ``flwr-client`` starts the SuperNode this way.

Why not Flower's ``--trusted-entities`` alone: in Flower 1.41 a SuperNode with trusted entities accepts
only FABs carrying ``valid_license`` verifications, which only the Flower platform's app store issues
(``_get_remote_fab``); a FAB submitted by ``flwr run <dir>`` to a self-hosted SuperLink has none and is
always refused. ``flwr-client --trusted-entities`` still passes the option through for that setting.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from common.audit_chain import append_entry, log_path
from common.protocol import APP_NOT_APPROVED

log = logging.getLogger("fedpcr.client")


class AppNotApproved(Exception):
    """The FAB's hash is not in the site's approved list."""

    def __init__(self, fab_hash: str) -> None:
        super().__init__(f"app bundle sha256 {fab_hash} is not in this site's policy code.app_hashes")
        self.fab_hash = fab_hash


def fab_sha256(content: bytes) -> str:
    """The app hash a site approves: sha256 hex of the FAB bytes (Flower's own fab_hash)."""
    return hashlib.sha256(content).hexdigest()


def _audit(audit_dir: Path | None, node_id: int, entry: dict[str, Any]) -> None:
    if audit_dir is not None:
        append_entry(log_path(audit_dir, node_id), {"time": time.time(), "node_id": int(node_id), **entry})


def pinned_pull(original: Callable[..., Any], approved: Collection[str], audit_dir: Path | None) -> Callable[..., Any]:
    """Wrap Flower's ``_pull_and_store_message`` so the FAB of a new run is checked against ``approved``."""
    from flwr.app import Error, Message
    import flwr.supernode.start_client_internal as sci

    def pull(**kwargs: Any) -> Any:
        seen: dict[str, Any] = {}
        receive, get_fab, state = kwargs["receive"], kwargs["get_fab"], kwargs["state"]

        def receive_seen() -> Any:
            out = receive()
            if out is not None:
                seen["msg"] = out[0]
            return out

        def get_checked_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            actual = fab_sha256(fab.content)
            ok = actual in approved
            msg = seen.get("msg")
            _audit(audit_dir, state.get_node_id(), {
                "kind": "app", "run_id": int(run_id), "server_round": None, "fab_hash": actual, "approved": ok,
                "message_type": str(msg.metadata.message_type) if msg is not None else None})
            if not ok:
                raise AppNotApproved(actual)
            log.info("app bundle %s approved by the site policy", actual)
            return fab

        try:
            return original(**{**kwargs, "receive": receive_seen, "get_fab": get_checked_fab})
        except AppNotApproved as exc:
            msg = seen["msg"]
            log.error("REFUSED run %s: %s; the app was not executed", msg.metadata.run_id, exc)
            reason = f"fedpcr: app bundle {exc.fab_hash} not approved by this site; not executed"
            reply = Message(Error(code=APP_NOT_APPROVED, reason=reason), reply_to=msg)
            sci._insert_message(reply, state, kwargs["object_store"])  # pylint: disable=protected-access
            _audit(audit_dir, state.get_node_id(), {
                "kind": "reply", "run_id": int(msg.metadata.run_id), "server_round": None,
                "message_type": str(msg.metadata.message_type), "error": {"code": APP_NOT_APPROVED, "reason": reason},
                "arrays": {}, "metrics": {}, "configs": {}})
            return int(msg.metadata.run_id)

    return pull


def install(approved: Collection[str], audit_dir: Path | None) -> None:
    """Patch this process's Flower SuperNode loop so only ``approved`` FAB hashes run."""
    import flwr.supernode.start_client_internal as sci

    sci._pull_and_store_message = pinned_pull(sci._pull_and_store_message, set(approved), audit_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flower-supernode`` (arguments after ``--``) with the FAB hash check of the site's policy."""
    from client.policy import load_policy

    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m client.approval")
    p.add_argument("--policy", type=Path, default=None, help="site policy YAML (code.app_hashes)")
    p.add_argument("--audit-dir", type=Path, default=None)
    args = p.parse_args(argv[:split])
    policy = load_policy(args.policy)
    if not policy.code.app_hashes:
        print("client.approval: the site policy approves no app (code.app_hashes is empty)", file=sys.stderr)
        return 2
    install(policy.code.app_hashes, args.audit_dir)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[split + 1:]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
