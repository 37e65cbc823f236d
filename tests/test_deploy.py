"""A real loopback deployment through the project's own commands: ``fedpcr-certs`` (CA + server
certificate), ``flwr-client keygen`` (hospital-held keys), ``fedpcr-server`` (SuperLink with TLS + SuperNode
authentication behind the Fleet-only proxy, key registration, ``flwr run``) and five ``flwr-client``
hospitals with their own policies as separate processes (see test_loopback_deployment_governance).
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


def _policy(path: Path, app_hashes: list[str], model_hash: str, **training: int) -> Path:
    """A hospital's policy file approving this app and model (plus training limits)."""
    import yaml

    path.write_text(yaml.safe_dump({"code": {"app_hashes": app_hashes, "model_presets": [], "model_hashes": [model_hash]},
                                    "training": {"max_local_epochs": 2, **training}}))
    return path


def _one_byte_modified_fab_hash() -> str:
    """The hash of the app bundle with one byte changed (what a site pinned to another bundle approves)."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    fab = bytearray(build_fab_from_disk(ROOT))
    fab[len(fab) // 2] ^= 1
    return hashlib.sha256(bytes(fab)).hexdigest()


def test_loopback_deployment_governance(tmp_path: Path) -> None:
    """One real run (TLS + node auth, SuperLink behind the Fleet proxy) showing every governance rule at once:
    HOSPA/HOSPB train; HOSPPOL's policy allows 1 local epoch (the coordinator asks 2) and refuses with the rule's
    code; HOSPAPP approved another bundle (one byte differs) and never runs the app; HOSPBROKEN has corrupted
    volumes and answers with a code, no patient ID or path reaching the coordinator; an unregistered key
    cannot join; the Control API is not reachable through the hospitals' port; the audit log verifies and
    an edited entry is named."""
    from client.keys import generate_keypair
    from common.protocol import APP_NOT_APPROVED, POLICY_LOCAL_EPOCHS, SiteSettings
    from server.cli import app_hash

    certs = make_dev_pki(tmp_path / "certs", [])  # CA + server certificate only: hospitals make their own keys
    keys = {n: generate_keypair(tmp_path / "keys" / n, n) for n in ("hospb", "hosppol", "hospapp", "hospbroken",
                                                                     "intruder")}
    res = subprocess.run([str(BIN / "flwr-client"), "keygen", "--out", str(tmp_path / "keys" / "hospa"), "--name",
                          "hospa"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ecdsa-sha2-nistp384" in res.stdout, res.stdout + res.stderr
    keys["hospa"] = (tmp_path / "keys" / "hospa" / "hospa", tmp_path / "keys" / "hospa" / "hospa.pub")
    assert oct(keys["hospa"][0].stat().st_mode & 0o777) == "0o600"

    good = ("HOSPA", "HOSPB")
    caches = {g: make_cache(tmp_path / "data", g, n=24, seed=i) for i, g in enumerate(good)}
    caches["HOSPPOL"] = make_cache(tmp_path / "data", "HOSPPOL", n=16, seed=5)
    caches["HOSPAPP"] = make_cache(tmp_path / "data", "HOSPAPP", n=16, seed=6)
    broken = caches["HOSPBROKEN"] = make_cache(tmp_path / "data", "HOSPBROKEN", n=16, seed=7, id_prefix="PTSECRET-")
    for vol in (broken / "volumes").glob("*.npy"):  # a corrupted volume (disk error, truncated copy)
        vol.write_bytes(b"\x93NUMPY garbage " + vol.name.encode())
    model_hash = SiteSettings(model_config=MODEL_JSON).model().hash()
    fab_hash = app_hash(ROOT)
    pol = {n: _policy(tmp_path / f"{n}.yaml", [fab_hash], model_hash) for n in (*good, "HOSPBROKEN")}
    pol["HOSPPOL"] = _policy(tmp_path / "HOSPPOL.yaml", [fab_hash], model_hash, max_local_epochs=1)
    pol["HOSPAPP"] = _policy(tmp_path / "HOSPAPP.yaml", [_one_byte_modified_fab_hash()], model_hash)

    out = tmp_path / "run"
    link_port, *node_ports = free_ports(7)
    procs = Procs()
    try:
        server_log = tmp_path / "server.log"
        registered = [keys[n.lower()][1] for n in caches]
        server = procs.start([str(BIN / "fedpcr-server"), "--certs", str(tmp_path / "certs"), "--port", str(link_port),
                              "--out-dir", str(out), "--rounds", "1", "--min-nodes", "5", "--set", "initial-eval=false",
                              "--set", "local-epochs=2",
                              "--set", f"model-config='{MODEL_JSON}'", "--set", f"train-config='{TRAIN_JSON}'",
                              "--register", *map(str, registered)], server_log)
        wait_for(lambda: "submitting:" in server_log.read_text() or server.poll() is not None, 120,
                 "SuperLink start + key registration")
        assert server.poll() is None, server_log.read_text()
        assert f"app sha256 {fab_hash}" in server_log.read_text()
        _control_api_not_exposed(link_port, certs.ca_cert)

        def client(name: str, key: str, cache: Path, port: int, *extra: str) -> subprocess.Popen:
            return procs.start([str(BIN / "flwr-client"), "--server", f"127.0.0.1:{link_port}", "--data-path",
                                str(cache), "--site-name", name, "--root-certificates", str(certs.ca_cert),
                                "--auth-key", str(keys[key][0]), "--port", str(port), *extra],
                               tmp_path / f"{name}.log")

        for (name, cache), port in zip(caches.items(), node_ports):
            client(name, name.lower(), cache, port, "--policy", str(pol[name]))
        intruder = client("INTRUDER", "intruder", caches["HOSPA"], node_ports[5], "--policy", str(pol["HOSPA"]),
                          "--max-retries", "2", "--max-wait-time", "30")

        server.wait(timeout=780)  # ~2.5 min on an idle 2-core machine; ClientApp start-ups dominate
        text = server_log.read_text()
        assert server.returncode == 0, text[-6000:]
        assert "site policy:" in (tmp_path / "HOSPPOL.log").read_text()  # the policy is printed at start

        intruder.wait(timeout=60)
        intruder_log = (tmp_path / "INTRUDER.log").read_text()
        assert intruder.returncode != 0 and "Failed to activate SuperNode" in intruder_log, intruder_log[-3000:]

        rows = read_metrics(out)
        assert [r["round"] for r in rows] == [1]
        assert sorted(rows[0]["train_sites"]) == sorted(good), rows
        assert set(rows[0]["per_site"]) == {*good, "HOSPPOL"}, rows  # its policy limits training, not evaluation
        errors = json.dumps(rows)
        assert str(POLICY_LOCAL_EPOCHS) in errors and str(APP_NOT_APPROVED) in errors, errors[-3000:]
        bundle = load_bundle(out / "bundle")
        assert sorted(bundle.train_sites) == sorted(good)

        # nothing identifying from the corrupted site at the coordinator: no patient ID, no site path
        stored = text + "".join(f.read_text(errors="replace") for f in out.rglob("*") if f.is_file()
                                and f.suffix in (".jsonl", ".json", ".log", ".txt", ".toml"))
        assert "PTSECRET" not in stored and str(broken) not in stored and "volumes" not in stored
        assert "PTSECRET" in (tmp_path / "HOSPBROKEN.log").read_text() or str(broken) in (
            tmp_path / "HOSPBROKEN.log").read_text()  # the details stay in the site's own log
        _audit_checks(caches, fab_hash)
    finally:
        procs.kill_all()


def _control_api_not_exposed(port: int, ca_cert: Path) -> None:
    """Through the hospitals' port only /v1/fleet/ answers: Control (runs, nodes, artifacts) is 404."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca_cert))
    for path in ("/v1/control/list-runs", "/v1/control/register-node", "/docs", "/v1/fleet/../control/list-runs"):
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, context=ctx, timeout=30)
        assert err.value.code == 404, path


def _audit_checks(caches: dict[str, Path], fab_hash: str) -> None:
    """Each site's audit log verifies; it records the refusals; editing one entry makes verify fail naming it."""
    from client.audit import default_audit_dir
    from common.audit_chain import read_entries

    fedpcr = str(BIN / "fedpcr")
    audit = default_audit_dir(caches["HOSPA"])
    res = subprocess.run([fedpcr, "audit", "verify", str(audit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "chain intact" in res.stdout and "array bytes" in res.stdout, res.stdout
    entries = read_entries(audit)
    assert {"instruction", "reply", "app"} <= {e["kind"] for e in entries}
    assert any(e["kind"] == "app" and e["fab_hash"] == fab_hash and e["approved"] for e in entries)
    app_refusals = read_entries(default_audit_dir(caches["HOSPAPP"]), "app")
    assert app_refusals and not any(e["approved"] for e in app_refusals)
    assert any(e.get("error") and e["error"]["code"] == 4131 for e in read_entries(default_audit_dir(caches["HOSPPOL"])))

    log = sorted(audit.glob("audit-*.jsonl"))[0]
    lines = log.read_text().splitlines()
    idx = next(i for i, ln in enumerate(lines) if '"train-loss"' in ln)
    lines[idx] = re.sub(r'"train-loss": [0-9.e+-]+', '"train-loss": 0.001', lines[idx])
    log.write_text("\n".join(lines) + "\n")
    res = subprocess.run([fedpcr, "audit", "verify", str(audit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and f"line {idx + 1}: entry seq {idx} was edited" in res.stdout, res.stdout
