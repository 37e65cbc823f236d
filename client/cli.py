"""``flwr-client``: check (optionally prepare) this hospital's site cache, then run its SuperNode.

TLS and SuperNode authentication are the default: ``--root-certificates`` (the federation's CA)
and ``--auth-key`` (this hospital's private key from ``flwr-client keygen``; only its ``.pub`` goes to
the coordinator). ``--insecure`` turns both off and must be asked for explicitly.
Governance: ``--policy FILE`` (printed at start; the conservative default when absent) is what the
ClientApp enforces each round, and its ``code.app_hashes`` pins the app: the SuperNode is started
through ``client.approval`` so an unapproved bundle never executes. The audit log is on by default
(``--audit-dir``, default ``<data-path>/audit``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

BANNER = "!" * 78


def check_site(data_path: Path) -> dict[str, object]:
    """Load the cache and summarise it (patients, labels, prep hash); raises with a clear message."""
    from common.data import load_cache

    cache = load_cache(data_path)
    labels = cache.labels()
    labelled = labels[~np.isnan(labels)]
    n_pos, n_neg = int((labelled == 1).sum()), int((labelled == 0).sum())
    if n_pos + n_neg == 0:
        raise ValueError(f"site cache {data_path} has no labelled patients (manifest.csv 'label' is empty); "
                         "nothing to train on")
    for issue in cache.issues:
        print(f"warning: {issue['patient'] or '-'}: {issue['field']}: {issue['reason']}", file=sys.stderr)
    return {"site": cache.site, "patients": len(cache.ids), "labelled": n_pos + n_neg, "pcr": n_pos,
            "no_pcr": n_neg, "prep_hash": cache.prep_hash, "channels": list(cache.channels)}


def prepare_site(dicom: Path, clinical: Path, out: Path, extra: Sequence[str]) -> None:
    """Run the site's preprocessing (``fedpcr prepare``) from a raw DICOM tree + clinical table."""
    from common.cli import main as fedpcr_main

    argv = ["prepare", "--dicom", str(dicom), "--clinical", str(clinical), "--out", str(out), *extra]
    print("preparing site data: fedpcr " + shlex.join(argv))
    rc = fedpcr_main(argv)
    if rc:
        raise SystemExit(f"flwr-client: preprocessing failed (exit code {rc}); the SuperNode was not started")


def node_config_arg(data_path: Path, site_name: str | None, audit_dir: Path | None = None,
                    state_dir: Path | None = None, policy: Path | None = None) -> str:
    """``--node-config`` value: the cache path (site label, audit directory, state directory, policy file) as
    TOML strings."""
    from client.audit import AUDIT_DIR
    from client.policy import POLICY_FILE
    from client.site import DATA_PATH, SITE_NAME_KEY

    items = [f"{DATA_PATH}={_toml_str(str(data_path.resolve()))}"]
    if site_name:
        items.append(f"{SITE_NAME_KEY}={_toml_str(site_name)}")
    if audit_dir is not None:
        items.append(f"{AUDIT_DIR}={_toml_str(str(audit_dir.resolve()))}")
    if state_dir is not None:
        from client.local_state import STATE_DIR

        items.append(f"{STATE_DIR}={_toml_str(str(state_dir.resolve()))}")
    if policy is not None:
        items.append(f"{POLICY_FILE}={_toml_str(str(policy.resolve()))}")
    return " ".join(items)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _state_dir(args: argparse.Namespace) -> Path:
    state = getattr(args, "state_dir", None)
    return state if state is not None else args.data_path.parent / f".{args.data_path.name}.fedpcr-state"


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The SuperNode command line: ``flower-supernode`` behind the app-hash check (``client.approval``)
    when the policy pins apps, plain ``flower-supernode`` when only ``--trusted-entities`` decides."""
    node_config = node_config_arg(args.data_path, args.site_name, args.audit_dir, _state_dir(args), args.policy)
    if getattr(args, "app_pinned", False):
        cmd = [sys.executable, "-m", "client.approval", "--audit-dir", str(args.audit_dir.resolve())]
        cmd += (["--policy", str(args.policy.resolve())] if args.policy else []) + ["--"]
    else:
        cmd = [shutil.which("flower-supernode") or str(Path(sys.executable).with_name("flower-supernode"))]
    cmd += ["--superlink", args.server, "--node-config", node_config, "--port", str(args.port)]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(args.root_certificates), "--auth-supernode-private-key", str(args.auth_key)]
    if args.max_retries is not None:
        cmd += ["--max-retries", str(args.max_retries)]
    if args.max_wait_time is not None:
        cmd += ["--max-wait-time", str(args.max_wait_time)]
    if args.trusted_entities:
        cmd += ["--trusted-entities", str(args.trusted_entities)]
    return cmd


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flwr-client", description="Join a fedpcr federation as a hospital: check "
                                "(or prepare) the local site cache, then start the Flower SuperNode.")
    p.add_argument("--server", required=True, help="SuperLink address HOST:PORT (Fleet API, default port 8000)")
    p.add_argument("--data-path", required=True, type=Path, help="this site's prepared cache (fedpcr prepare --out)")
    p.add_argument("--site-name", default=None, help="site label reported with results (default: the cache's site code)")
    p.add_argument("--root-certificates", type=Path, help="the federation CA certificate (PEM)")
    p.add_argument("--auth-key", type=Path, help="this hospital's SuperNode private key (OpenSSH, from "
                   "'flwr-client keygen')")
    p.add_argument("--insecure", action="store_true", help="NO TLS and NO node authentication (local testing only)")
    p.add_argument("--port", type=int, default=9094, help="local SuperNode runtime port (unique per node on a host)")
    p.add_argument("--audit-dir", type=Path, default=None,
                   help="hash-chained audit log of every instruction and reply (default: DATA_PATH/audit); "
                   "check it with 'fedpcr audit verify DIR'")
    p.add_argument("--policy", type=Path, default=None,
                   help="site policy YAML: what this hospital accepts (default: the conservative built-in policy)")
    p.add_argument("--dicom", type=Path, help="raw DICOM tree: prepare the cache into --data-path first")
    p.add_argument("--clinical", type=Path, help="clinical table for --dicom")
    p.add_argument("--prepare-args", default="", help="extra arguments for 'fedpcr prepare' (one quoted string)")
    p.add_argument("--max-retries", type=int, default=None, help="give up after this many connection attempts")
    p.add_argument("--max-wait-time", type=float, default=600.0,
                   help="give up (exit 3) after this many seconds without a working SuperNode; it is restarted "
                        "with backoff until then (default 600)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where this site keeps local state across restarts (FedBN norm layers; default: "
                        "DATA_PATH/../.<site cache name>.fedpcr-state)")
    p.add_argument("--trusted-entities", type=Path, default=None, help="YAML of app publisher keys to accept")
    p.add_argument("--check-only", action="store_true", help="check the site data and print the command; do not connect")
    args = p.parse_args(argv)
    if not args.insecure:
        missing = [flag for flag, v in (("--root-certificates", args.root_certificates), ("--auth-key", args.auth_key))
                   if v is None]
        if missing:
            p.error(f"{' and '.join(missing)} required (TLS and node authentication are on by default; "
                    "--insecure turns them off)")
        for flag, path in (("--root-certificates", args.root_certificates), ("--auth-key", args.auth_key)):
            if not path.is_file():
                p.error(f"{flag}: file not found: {path}")
    if (args.dicom is None) != (args.clinical is None):
        p.error("--dicom and --clinical go together")
    if args.policy is not None and not args.policy.is_file():
        p.error(f"--policy: file not found: {args.policy}")
    if args.audit_dir is None:
        from client.audit import default_audit_dir

        args.audit_dir = default_audit_dir(args.data_path)
    return args


def show_policy(args: argparse.Namespace) -> None:
    """Load the site policy (or the default), print it, and decide how the app is pinned."""
    import yaml

    from client.policy import load_policy

    try:
        policy = load_policy(args.policy)
    except ValueError as exc:
        raise SystemExit(f"flwr-client: {exc}") from None
    source = str(args.policy) if args.policy else "built-in conservative default (no --policy given)"
    print(f"site policy: {source}\n" + yaml.safe_dump(policy.to_mapping(), sort_keys=False).rstrip())
    print(f"audit log: {args.audit_dir} (verify with: fedpcr audit verify {args.audit_dir})")
    args.app_pinned = bool(policy.code.app_hashes)
    if not args.app_pinned and not args.trusted_entities:
        msg = ("the site policy approves no app (code.app_hashes is empty) and no --trusted-entities is given: "
               "add the app hash the coordinator publishes (fedpcr-server --app-hash) to the policy")
        if not args.check_only:
            raise SystemExit(f"flwr-client: {msg}")
        print(f"warning: {msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flwr-client`` (``flwr-client keygen ...`` makes the hospital's key pair): check the
    site, then run and watch the SuperNode (``client.supervise``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        from client.keys import main as keygen

        return keygen(argv[1:])
    args = parse_args(argv)
    show_policy(args)
    if args.insecure:
        print(f"{BANNER}\nWARNING: --insecure: NO TLS and NO SuperNode authentication. Model updates travel in "
              f"clear text and anyone can join. Use only on a closed test network.\n{BANNER}", file=sys.stderr)
    if args.dicom is not None:
        prepare_site(args.dicom, args.clinical, args.data_path, shlex.split(args.prepare_args))
    try:
        info = check_site(args.data_path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"flwr-client: site data not usable: {exc}", file=sys.stderr)
        return 2
    print(f"site {info['site']}: {info['patients']} patients, {info['labelled']} labelled "
          f"({info['pcr']} pCR / {info['no_pcr']} no pCR), channels {','.join(info['channels'])}, "
          f"prep hash {info['prep_hash']}")
    cmd = supernode_command(args)
    print("starting: " + shlex.join(cmd), flush=True)
    if args.check_only:
        return 0
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from client.supervise import Policy, supervise

    return supervise(cmd, Policy(max_wait=float(args.max_wait_time)))


if __name__ == "__main__":
    raise SystemExit(main())
