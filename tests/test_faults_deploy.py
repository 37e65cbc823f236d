"""Fault injection on the real loopback deployment (fedpcr-server: SuperLink with TLS + SuperNode auth;
flwr-client hospitals as separate processes), every process stopped in ``finally``. All ``slow``:
each run takes minutes on a shared 2-core machine.

- a hospital started before the coordinator joins (flwr-client restarts its SuperNode with backoff);
- a hospital killed after round 1: the run finishes with the other two (bound: node-wait + round-timeout
  per round, stated below), the dead site is recorded as missing/failed per round;
- that hospital restarted: it takes part again from the next round;
- the coordinator SIGKILLed mid-run and started again with the same command: it stops the leftover
  SuperLink/ServerApp tree, resumes after the last committed round, every round in metrics.jsonl once;
- an unreachable coordinator: flwr-client gives up with exit 3 and a clear message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cache_factory import make_cache
from server.certs import make_dev_pki
from server.checkpoint import load_checkpoint, read_metrics
from common.procs import alive, descendants
from test_deploy import BIN, MODEL_JSON, ROOT, TRAIN_JSON, Procs, _policy, free_ports, wait_for

pytestmark = pytest.mark.slow
SITES = ("HOSPA", "HOSPB", "HOSPC")
#: Round policy of these runs: a vanished site costs at most ROUND_TIMEOUT per phase and NODE_WAIT per round.
ROUND_TIMEOUT, NODE_WAIT = 240, 120


def _server_cmd(certs, port: int, out: Path, rounds: int, min_nodes: int) -> list[str]:
    return [str(BIN / "fedpcr-server"), "--certs", str(certs.ca_cert.parent), "--port", str(port), "--out-dir", str(out),
            "--rounds", str(rounds), "--min-nodes", str(min_nodes), "--set", "initial-eval=false",
            "--set", f"model-config='{MODEL_JSON}'", "--set", f"train-config='{TRAIN_JSON}'",
            "--set", f"round-timeout={ROUND_TIMEOUT}.0", "--set", f"node-wait={NODE_WAIT}.0", "--set", "min-replies=2",
            "--set", "run-timeout=3000.0", "--register",
            *(str(certs.node_keys[s.lower()][1]) for s in SITES)]


def _site_policy(tmp: Path, name: str) -> Path:
    """The hospital's policy approving this app bundle and the test model (governance is on by default)."""
    from common.protocol import SiteSettings
    from server.cli import app_hash

    return _policy(tmp / f"{name}-policy.yaml", [app_hash(ROOT)], SiteSettings(model_config=MODEL_JSON).model().hash())


def _client(procs: Procs, tmp: Path, certs, name: str, cache: Path, link: int, port: int, log: str = "") -> subprocess.Popen:
    return procs.start([str(BIN / "flwr-client"), "--server", f"127.0.0.1:{link}", "--data-path", str(cache),
                        "--site-name", name, "--root-certificates", str(certs.ca_cert), "--auth-key",
                        str(certs.node_keys[name.lower()][0]), "--port", str(port), "--max-wait-time", "300",
                        "--policy", str(_site_policy(tmp, name))],
                       tmp / f"{log or name}.log")


def _rows(out: Path) -> list[dict]:
    try:
        return read_metrics(out)
    except (OSError, ValueError):
        return []


@pytest.fixture()
def setup(tmp_path: Path):
    certs = make_dev_pki(tmp_path / "certs", [s.lower() for s in SITES])
    caches = {s: make_cache(tmp_path / "data", s, n=24, seed=i) for i, s in enumerate(SITES)}
    return certs, caches


def test_late_coordinator_dead_and_returning_hospital(setup, tmp_path: Path) -> None:
    certs, caches = setup
    out = tmp_path / "run"
    link, *ports = free_ports(5)
    procs = Procs()
    try:
        # HOSPA and HOSPB start BEFORE the coordinator exists
        clients = {s: _client(procs, tmp_path, certs, s, caches[s], link, ports[i]) for i, s in enumerate(SITES[:2])}
        time.sleep(15)
        assert all(c.poll() is None for c in clients.values()), "a client gave up before the coordinator started"
        server_log = tmp_path / "server.log"
        t0 = time.time()
        server = procs.start(_server_cmd(certs, link, out, rounds=3, min_nodes=3), server_log)
        clients["HOSPC"] = _client(procs, tmp_path, certs, "HOSPC", caches["HOSPC"], link, ports[2])
        wait_for(lambda: len(_rows(out)) >= 1 or server.poll() is not None, 900, "round 1")
        assert _rows(out)[0]["train_sites"] == list(SITES), server_log.read_text()[-4000:]
        # HOSPC dies (its whole SuperNode tree)
        t_kill = time.time()
        os.killpg(clients["HOSPC"].pid, signal.SIGKILL)
        wait_for(lambda: len(_rows(out)) >= 2 or server.poll() is not None, 2 * ROUND_TIMEOUT + NODE_WAIT + 240,
                 "round 2 without HOSPC")
        t_recovered = time.time()
        row2 = _rows(out)[1]
        assert row2["train_sites"] == ["HOSPA", "HOSPB"] and "HOSPC" in row2["failed_sites"], row2
        # HOSPC comes back and takes part again from a later round
        _client(procs, tmp_path, certs, "HOSPC", caches["HOSPC"], link, ports[3], log="HOSPC-restarted")
        server.wait(timeout=1500)
        assert server.returncode == 0, server_log.read_text()[-6000:]
        rows = _rows(out)
        assert [r["round"] for r in rows] == [1, 2, 3]
        assert rows[-1]["train_sites"] == list(SITES), rows[-1]
        print(json.dumps({"run_s": round(time.time() - t0, 1), "kill_to_next_round_s": round(t_recovered - t_kill, 1),
                          "rounds": [(r["round"], r["train_sites"], r["failed_sites"], round(r["time_s"], 1))
                                     for r in rows]}))
    finally:
        procs.kill_all()


def test_coordinator_sigkill_resume_exactly_once(setup, tmp_path: Path) -> None:
    certs, caches = setup
    out = tmp_path / "run"
    link, *ports = free_ports(4)
    procs = Procs()
    try:
        for i, s in enumerate(SITES):
            _client(procs, tmp_path, certs, s, caches[s], link, ports[i])
        cmd = _server_cmd(certs, link, out, rounds=3, min_nodes=3)
        first = procs.start(cmd, tmp_path / "server1.log")
        wait_for(lambda: len(_rows(out)) >= 1 or first.poll() is not None, 900, "round 1")
        tree = [first.pid, *descendants(first.pid)]
        superlink = json.loads((out / "fedpcr-server.pids").read_text())["superlink"]
        tree += [superlink, *descendants(superlink)]
        t_kill = time.time()
        os.kill(first.pid, signal.SIGKILL)  # no cleanup possible: SuperLink + ServerApp keep running
        first.wait(10)
        second = procs.start(cmd, tmp_path / "server2.log")  # the same command again
        second.wait(timeout=1500)
        text = (tmp_path / "server2.log").read_text()
        assert second.returncode == 0, text[-6000:]
        assert "a previous fedpcr-server" in text
        assert not any(alive(p) for p in tree if p != first.pid), "leftovers of the killed coordinator still run"
        rows = _rows(out)
        assert [r["round"] for r in rows] == [1, 2, 3]
        assert load_checkpoint(out).round == 3
        print(json.dumps({"kill_to_finish_s": round(time.time() - t_kill, 1)}))
    finally:
        procs.kill_all()


def test_client_gives_up_clearly_without_coordinator(setup, tmp_path: Path) -> None:
    certs, caches = setup
    link, port = free_ports(2)
    res = subprocess.run([str(BIN / "flwr-client"), "--server", f"127.0.0.1:{link}", "--data-path",
                          str(caches["HOSPA"]), "--root-certificates", str(certs.ca_cert), "--auth-key",
                          str(certs.node_keys["hospa"][0]), "--port", str(port), "--max-wait-time", "20",
                          "--max-retries", "2", "--policy", str(_site_policy(tmp_path, "HOSPA"))], capture_output=True, text=True, timeout=180)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "GIVING UP" in res.stderr and "--max-wait-time" in res.stderr
