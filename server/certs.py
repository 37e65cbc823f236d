"""``fedpcr-certs``: a development CA, a SuperLink TLS certificate and SuperNode key pairs.

For development and tests only; a production deployment uses the hospital network's PKI. The CA's
private key is written to ``OUT/ca-private/ca.key``, apart from what the running server needs
(``ca.crt``, ``server.pem``, ``server.key``): move that folder offline after issuing the certificate.
Hospitals make their own SuperNode keys (``flwr-client keygen``); ``--dev-node-keys`` makes them here
for a single-machine test only. Formats
are what Flower 1.41 reads: PEM CA/server certificate and key (``flower-superlink --ssl-*``),
and per-node ECDSA P-384 keys in OpenSSH format (``flower-supernode --auth-supernode-private-key``
reads ``load_ssh_private_key``; ``flwr supernode register`` reads ``load_ssh_public_key``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


#: Where the CA private key goes: its own folder, never read by the running server.
CA_KEY = "ca-private/ca.key"


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`make_dev_pki` wrote things."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, tuple[Path, Path]]  # name -> (private, public)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpcr development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(out: Path, days: int = 365) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Self-signed development CA (``ca.key``, ``ca.crt``)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("fedpcr dev CA")).issuer_name(_name("fedpcr dev CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(out / CA_KEY, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_server_cert(out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 365) -> tuple[Path, Path]:
    """Server certificate signed by the CA, with the given DNS names / IP addresses as SANs."""
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_path, cert_path = out / "server.key", out / "server.pem"
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make_node_keys(out: Path, name: str) -> tuple[Path, Path]:
    """ECDSA P-384 key pair in OpenSSH format: ``<name>`` (private) and ``<name>.pub`` (register this).
    Test/dev only: a hospital makes its own with ``flwr-client keygen``."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv = out / name
    pub = out / f"{name}.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b" " + name.encode() + b"\n")
    return priv, pub


def make_dev_pki(out: str | Path, nodes: Sequence[str], hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                 days: int = 365) -> CertPaths:
    """CA + server certificate + one key pair per node name, all under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(out, days)
    server_cert, server_key = make_server_cert(out, ca_key, ca_cert, hosts, days)
    keys = {n: make_node_keys(out / "nodes", n) for n in nodes}
    return CertPaths(ca_cert=out / "ca.crt", server_cert=server_cert, server_key=server_key, node_keys=keys)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``fedpcr-certs --out certs --nodes hospital-a hospital-b [--host coordinator.example.org]``."""
    p = argparse.ArgumentParser(prog="fedpcr-certs", description="Development CA, SuperLink certificate and "
                                "SuperNode authentication keys for a fedpcr federation (not for production).")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--dev-node-keys", "--nodes", dest="nodes", nargs="*", default=[],
                   help="DEVELOPMENT ONLY: also make SuperNode key pairs here (hospitals run 'flwr-client keygen')")
    p.add_argument("--host", action="append", default=None,
                   help="SuperLink DNS name or IP for the certificate SAN (repeatable; default localhost, 127.0.0.1)")
    p.add_argument("--days", type=int, default=365)
    args = p.parse_args(argv)
    hosts = args.host or ["localhost", "127.0.0.1"]
    paths = make_dev_pki(args.out, args.nodes, hosts, args.days)
    print(f"CA certificate   {paths.ca_cert}   (give to every hospital: --root-certificates)")
    print(f"server cert/key  {paths.server_cert} {paths.server_key}   (SuperLink only; SAN: {', '.join(hosts)})")
    print(f"CA private key   {Path(args.out) / CA_KEY}   (NOT needed by the running server: keep it offline)")
    if args.nodes:
        print("WARNING: --dev-node-keys: hospital private keys made by the coordinator; for tests on one machine "
              "only. In a deployment each hospital runs 'flwr-client keygen' and sends only its .pub file.")
    for n, (priv, pub) in paths.node_keys.items():
        print(f"node {n:<12} private {priv} (stays at the hospital)  public {pub} (register at the SuperLink)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
