"""A real loopback deployment through the project's own commands: ``fedpcr-certs`` material,
``fedpcr-server`` (SuperLink with TLS + SuperNode authentication, key registration, ``flwr run``) and
three ``flwr-client`` hospitals as separate processes. A fourth registered hospital whose cache was
prepared differently is refused with both hashes named; a node with an unregistered key cannot join.
Every process started here is killed at the end, also on failure."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache_factory import make_cache
from common.bundle import load_bundle
from common.config import PrepConfig
from server.certs import make_dev_pki
from server.checkpoint import read_metrics

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOOD = ("HOSPA", "HOSPB", "HOSPC")
MODEL_JSON = json.dumps({"width": 4, "image_features": 8, "clinical_hidden": 8, "fusion_hidden": 8})
TRAIN_JSON = json.dumps({"batch_size": 8, "augment": False, "val_fraction": 0.3, "test_fraction": 0.2})


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Procs:
    """Processes started by the test, each in its own session so its children die with it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        fh = log.open("wb")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        fh.close()
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole session, including SuperExec / ClientApp children
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_certs_formats(tmp_path: Path) -> None:
    """Keys load the way Flower loads them (OpenSSH EC P-384); the server cert chains to the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    paths = make_dev_pki(tmp_path, ["site1"])
    priv, pub = paths.node_keys["site1"]
    key = load_ssh_private_key(priv.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == key.public_key().public_numbers()
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert oct(priv.stat().st_mode & 0o777) == "0o600"


def test_client_requires_tls_and_auth_unless_insecure(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, "S", n=10)
    res = subprocess.run([str(BIN / "flwr-client"), "--server", "127.0.0.1:1", "--data-path", str(cache)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "--root-certificates and --auth-key required" in res.stderr
    res = subprocess.run([str(BIN / "flwr-client"), "--server", "127.0.0.1:1", "--data-path", str(cache),
                          "--insecure", "--check-only"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "NO TLS" in res.stderr and "--insecure" in res.stdout
    assert PrepConfig().hash() in res.stdout


def test_loopback_deployment_tls_auth(tmp_path: Path) -> None:
    certs = make_dev_pki(tmp_path / "certs", [*(g.lower() for g in GOOD), "hospbad", "intruder"])
    caches = {g: make_cache(tmp_path / "data", g, n=24, seed=i) for i, g in enumerate(GOOD)}
    bad_prep = PrepConfig(spacing_mm=1.5)
    bad_cache = make_cache(tmp_path / "data", "HOSPBAD", n=16, seed=9, prep=bad_prep)
    out = tmp_path / "run"
    link_port, *node_ports = free_ports(6)
    procs = Procs()
    try:
        server_log = tmp_path / "server.log"
        registered = [certs.node_keys[n][1] for n in (*(g.lower() for g in GOOD), "hospbad")]
        server = procs.start([str(BIN / "fedpcr-server"), "--certs", str(tmp_path / "certs"), "--port", str(link_port),
                              "--out-dir", str(out), "--rounds", "2", "--min-nodes", "4", "--set", "initial-eval=false",
                              "--set", f"model-config='{MODEL_JSON}'", "--set", f"train-config='{TRAIN_JSON}'",
                              "--register", *map(str, registered)], server_log)
        wait_for(lambda: "submitting:" in server_log.read_text() or server.poll() is not None, 120,
                 "SuperLink start + key registration")
        assert server.poll() is None, server_log.read_text()

        def client(name: str, key: str, cache: Path, port: int, *extra: str) -> subprocess.Popen:
            return procs.start([str(BIN / "flwr-client"), "--server", f"127.0.0.1:{link_port}", "--data-path",
                                str(cache), "--site-name", name, "--root-certificates", str(certs.ca_cert),
                                "--auth-key", str(certs.node_keys[key][0]), "--port", str(port), *extra],
                               tmp_path / f"{name}.log")

        for (name, cache), port in zip(caches.items(), node_ports):
            client(name, name.lower(), cache, port)
        client("HOSPBAD", "hospbad", bad_cache, node_ports[3])
        intruder = client("INTRUDER", "intruder", caches["HOSPA"], node_ports[4], "--max-retries", "2",
                          "--max-wait-time", "30")

        server.wait(timeout=420)
        text = server_log.read_text()
        assert server.returncode == 0, text[-6000:]

        # the unregistered key never joined
        intruder.wait(timeout=60)
        intruder_log = (tmp_path / "INTRUDER.log").read_text()
        assert intruder.returncode != 0 and "Failed to activate SuperNode" in intruder_log, intruder_log[-3000:]

        # the differently-prepared site was refused, with both hashes and its node id in the server log
        m = re.search(r"registered hospbad: .*?SuperNode (\d+) registered", text)
        assert m, text[-4000:]
        refusal = [ln for ln in text.splitlines() if f"node {m.group(1)} REFUSED" in ln]
        assert refusal, text[-6000:]
        assert PrepConfig().hash() in refusal[0] and bad_prep.hash() in refusal[0]

        rows = read_metrics(out)
        assert [r["round"] for r in rows] == [1, 2]
        assert all(set(r["per_site"]) == set(GOOD) for r in rows)
        bundle = load_bundle(out / "bundle")
        assert sorted(bundle.train_sites) == sorted(GOOD)
        assert bundle.prep_hash == PrepConfig().hash()
        assert 0.0 < bundle.threshold < 1.0
    finally:
        procs.kill_all()
