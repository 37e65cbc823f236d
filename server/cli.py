"""``fedpcr-server``: the coordinator in one command.

Starts a SuperLink with TLS and SuperNode authentication, registers the hospitals' public keys
(``flwr supernode register``), submits the fedpcr app (``flwr run <app> fedpcr --stream``) with
runtime dependency installation disabled, streams the log, and stops the SuperLink when the run
is over (``--keep-running`` leaves it up). The hospitals join with ``flwr-client``.

Stopping it (SIGTERM, SIGINT, SIGHUP, normal exit) stops everything it started, SuperExec and ServerApp
included (``common.procs``); after a SIGKILL, running the same command again stops the leftovers first
and the ServerApp resumes after the last committed round (``resume = true`` is the default).
Exposure: the SuperLink itself listens on 127.0.0.1 only (its one port serves Fleet, Control and the
ServerApp runtime); the address hospitals reach (``--host``/``--port``) is ``server.fleet_proxy``,
which forwards the Fleet API only. ``--insecure`` is refused unless ``--host`` is a loopback address.
App approval: the app's FAB hash (``--app-hash`` prints it; written to ``OUT/app.sha256`` at each
run) is what hospitals list in their policy's ``code.app_hashes``.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

CONNECTION = "fedpcr"
BANNER = "!" * 78
ENV_DEFAULTS = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def _exe(name: str) -> str:
    """A Flower executable from this environment (next to the running Python first)."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry, no runtime installs."""
    env = dict(os.environ)
    for k, v in ENV_DEFAULTS.items():
        env.setdefault(k, v)
    env["FLWR_HOME"] = str(flwr_home)
    return env


def write_connection(flwr_home: Path, address: str, ca_cert: Path | None, insecure: bool) -> Path:
    """Add/replace the ``[superlink.fedpcr]`` connection in ``$FLWR_HOME/config.toml`` (made default)."""
    import tomli
    import tomli_w

    path = flwr_home / "config.toml"
    flwr_home.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = tomli.loads(path.read_text()) if path.exists() else {}
    conns = data.setdefault("superlink", {})
    conn: dict[str, Any] = {"address": address}
    if insecure:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(Path(ca_cert).resolve())  # type: ignore[arg-type]
    conns[CONNECTION] = conn
    conns["default"] = CONNECTION
    path.write_text(tomli_w.dumps(data))
    return path


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def app_hash(app_dir: Path) -> str:
    """sha256 of the FAB ``flwr run`` builds from ``app_dir`` (the hash a hospital approves)."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def superlink_command(args: argparse.Namespace) -> list[str]:
    """``flower-superlink`` command line: TLS + SuperNode auth unless ``--insecure``; on loopback behind
    the Fleet proxy (``args.link_port``) unless insecure (then ``--host``, which must be loopback)."""
    host, port = (args.host, args.port) if args.insecure else ("127.0.0.1", args.link_port)
    cmd = [_exe("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(args.ca_cert), "--ssl-certfile", str(args.server_cert),
                "--ssl-keyfile", str(args.server_key), "--enable-supernode-auth"]
    if args.database:
        cmd += ["--database", str(args.database)]
    return cmd


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections (or raise)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"SuperLink did not open {host}:{port} within {timeout:.0f} s")


def register_nodes(keys: Sequence[Path], env: dict[str, str]) -> list[str]:
    """``flwr supernode register <key.pub> fedpcr --name <stem>`` for each hospital key."""
    out = []
    for key in keys:
        res = subprocess.run([_exe("flwr"), "supernode", "register", str(key), CONNECTION, "--name", key.stem],
                             env=env, capture_output=True, text=True, timeout=120)
        text = (res.stdout + res.stderr).strip()
        if res.returncode != 0:
            raise RuntimeError(f"registering {key} failed (exit {res.returncode}): {text}")
        print(f"registered {key.stem}: {text.splitlines()[-1] if text else 'ok'}", flush=True)
        out.append(text)
    return out


def write_run_config(path: Path, values: dict[str, Any]) -> Path:
    """TOML file of run-config overrides for ``flwr run --run-config``."""
    import tomli_w

    path.write_text(tomli_w.dumps(values))
    return path


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    import tomli

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"fedpcr-server: --set expects key=value (TOML value), got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = tomli.loads(f"v = {value}")["v"]
        except tomli.TOMLDecodeError:
            parsed = value  # bare string
        if isinstance(parsed, dict):  # model-config={"width": 4}: the *-config keys hold JSON text
            import json

            parsed = json.dumps(parsed)
        out[key.strip()] = parsed
    return out


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM the process and every descendant (any session), SIGKILL after ``timeout``."""
    from common.procs import kill_tree

    if proc is None or proc.poll() is not None:
        return
    kill_tree([proc.pid], timeout)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def default_app_dir() -> Path:
    """The fedpcr project directory (holds pyproject.toml with the Flower app tables)."""
    return Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedpcr-server", description="Coordinator: start a SuperLink (TLS + "
                                "SuperNode authentication), register hospital keys, run the fedpcr federation.")
    p.add_argument("--certs", type=Path, help="directory from fedpcr-certs (ca.crt, server.pem, server.key)")
    p.add_argument("--ca-cert", type=Path, help="CA certificate (default CERTS/ca.crt)")
    p.add_argument("--server-cert", type=Path, help="SuperLink certificate (default CERTS/server.pem)")
    p.add_argument("--server-key", type=Path, help="SuperLink private key (default CERTS/server.key)")
    p.add_argument("--register", type=Path, nargs="*", default=[], help="hospital public keys (.pub) to admit")
    p.add_argument("--host", default="127.0.0.1", help="address hospitals connect to (0.0.0.0 for a network); "
                   "only the Fleet API is served there")
    p.add_argument("--port", type=int, default=8000, help="port hospitals connect to (the Fleet API only)")
    p.add_argument("--connect-host", default=None, help="host name the CLI uses to reach the SuperLink "
                   "(a loopback name in the certificate SAN; default 127.0.0.1)")
    p.add_argument("--out-dir", type=Path, help="run output: checkpoints, metrics.jsonl, bundle, logs (required)")
    p.add_argument("--app-hash", action="store_true", help="print the app's FAB sha256 (what hospitals approve) "
                   "and exit")
    p.add_argument("--link-port", type=int, default=0, help="loopback port of the SuperLink behind the Fleet "
                   "proxy (default: a free one)")
    p.add_argument("--app", type=Path, default=None, help="fedpcr project directory (default: this installation)")
    p.add_argument("--rounds", type=int, default=None, help="num-server-rounds")
    p.add_argument("--strategy", default=None, help="fedavg | fedprox | fedadam | fedyogi | fedbn | fedtrimmedavg | fedmedian")
    p.add_argument("--min-nodes", type=int, default=None, help="wait for this many hospitals before each round")
    p.add_argument("--set", dest="sets", action="append", default=[], help="other run-config key=value (repeatable)")
    p.add_argument("--flwr-home", type=Path, default=None, help="Flower home (default: $FLWR_HOME or OUT/flwr-home)")
    p.add_argument("--database", type=Path, default=None, help="SuperLink state database (default: in memory)")
    p.add_argument("--insecure", action="store_true", help="NO TLS and NO SuperNode authentication (testing only)")
    p.add_argument("--keep-running", action="store_true", help="leave the SuperLink up after the run")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    if args.app_hash:
        return args
    if args.out_dir is None:
        p.error("--out-dir is required")
    if args.insecure and not is_loopback(args.host):
        p.error(f"--insecure with --host {args.host}: refused. Without TLS and node authentication the SuperLink "
                "may only listen on a loopback address (127.0.0.1, ::1, localhost)")
    if not args.insecure:
        c = args.certs
        args.ca_cert = args.ca_cert or (c / "ca.crt" if c else None)
        args.server_cert = args.server_cert or (c / "server.pem" if c else None)
        args.server_key = args.server_key or (c / "server.key" if c else None)
        for flag in ("ca_cert", "server_cert", "server_key"):
            path = getattr(args, flag)
            if path is None or not Path(path).is_file():
                p.error(f"--{flag.replace('_', '-')} missing or not a file ({path}); TLS is required unless --insecure "
                        "(make development certificates with fedpcr-certs)")
    return args


def _run_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The run config ``flwr run`` submits (CLI options + ``--set``), validated before anything starts."""
    from server.config import FederationConfig

    run_config: dict[str, Any] = {"out-dir": str(out)}
    if args.rounds is not None:
        run_config["num-server-rounds"] = args.rounds
    if args.strategy is not None:
        run_config["strategy"] = args.strategy
    if args.min_nodes is not None:
        run_config["min-nodes"] = args.min_nodes
    run_config.update(_parse_set(args.sets))
    FederationConfig.from_run_config(run_config)  # unknown keys / bad values fail here
    return run_config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedpcr-server``; returns 0 when the run wrote its model bundle."""
    args = parse_args(argv)
    app_dir = (args.app or default_app_dir()).resolve()
    if args.app_hash:
        print(app_hash(app_dir))
        return 0
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    flwr_home = (args.flwr_home or Path(os.environ.get("FLWR_HOME") or out / "flwr-home")).resolve()
    env = flwr_env(flwr_home)
    if args.insecure:
        print(f"{BANNER}\nWARNING: --insecure: NO TLS and NO SuperNode authentication; anyone can join and "
              f"model updates travel in clear text. Testing only.\n{BANNER}", file=sys.stderr)
        if args.register:
            print("note: --register is ignored without node authentication", file=sys.stderr)
    if args.insecure:
        connect_host, link_port = args.connect_host or args.host, args.port
    else:  # the CLI talks to the loopback SuperLink directly; hospitals reach only the Fleet proxy
        connect_host, link_port = args.connect_host or "127.0.0.1", args.link_port or _free_port()
    args.link_port = link_port
    write_connection(flwr_home, f"{connect_host}:{link_port}", args.ca_cert, args.insecure)

    rc_path = write_run_config(out / "run_config.toml", _run_config(args, out))

    from common.procs import reap_recorded, record

    left = reap_recorded(out)
    if left:
        print(f"stopped {len(left)} process(es) a previous fedpcr-server on {out} left running: {left}", flush=True)
    superlink: subprocess.Popen | None = None
    runner: subprocess.Popen | None = None
    proxy: Any = None
    log_fh = (out / "superlink.log").open("ab")

    def _stop_all() -> None:
        stop(runner)
        stop(superlink)

    atexit.register(_stop_all)

    def _terminate(signum: int, _frame: Any) -> None:  # SIGTERM/SIGHUP: stop the SuperLink on the way out
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        cmd = superlink_command(args)
        print("starting SuperLink: " + " ".join(cmd), flush=True)
        superlink = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=str(out))
        record(out, {"superlink": superlink.pid})
        wait_for_port(connect_host, link_port, args.startup_timeout, superlink)
        if not args.insecure:
            from server.fleet_proxy import start as start_proxy

            proxy = start_proxy(args.host, args.port, f"https://{connect_host}:{link_port}", args.server_cert,
                                args.server_key, args.ca_cert)
            wait_for_port("127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host, args.port,
                          args.startup_timeout)
            print(f"Fleet API for hospitals: {args.host}:{args.port} (SuperLink itself on 127.0.0.1:{link_port})",
                  flush=True)
            register_nodes(args.register, env)
        digest = app_hash(app_dir)
        (out / "app.sha256").write_text(digest + "\n")
        print(f"app sha256 {digest} (hospitals approve it in their policy code.app_hashes)", flush=True)
        run_cmd = [_exe("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(rc_path)]
        print("submitting: " + " ".join(run_cmd), flush=True)
        runner = subprocess.Popen(run_cmd, env=env, cwd=str(app_dir), start_new_session=True)
        record(out, {"superlink": superlink.pid, "flwr-run": runner.pid})
        returncode = runner.wait()
        bundle = out / "bundle" / "bundle.json"
        ok = returncode == 0 and bundle.exists()
        print(f"run {'finished' if ok else 'FAILED'}: flwr run exit {returncode}; bundle "
              f"{'written to ' + str(bundle.parent) if bundle.exists() else 'missing'}", flush=True)
        if args.keep_running:
            print("SuperLink keeps running (Ctrl-C to stop)", flush=True)
            superlink.wait()
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if proxy is not None:
            proxy.should_exit = True
        _stop_all()
        (out / "fedpcr-server.pids").unlink(missing_ok=True)
        log_fh.close()


if __name__ == "__main__":
    raise SystemExit(main())
