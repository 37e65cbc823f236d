"""``flwr-client keygen --out DIR``: the hospital makes its own SuperNode key pair; only the public key leaves.

ECDSA P-384 in OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` and
``flwr supernode register`` read). The private key file is created atomically with mode 0600
(``O_CREAT | O_EXCL``: an existing key is never overwritten, and no other user can open it in between).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and ``data``; FileExistsError when it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o600)  # whatever the umask


def generate_keypair(out: str | Path, name: str) -> tuple[Path, Path]:
    """``OUT/<name>`` (private, 0600) and ``OUT/<name>.pub`` (give this to the coordinator)."""
    out = Path(out)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / name, out / f"{name}.pub"
    if pub.exists():
        raise FileExistsError(f"{pub} already exists; refusing to replace a key pair")
    write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                    + b" " + name.encode() + b"\n")
    return priv, pub


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of ``flwr-client keygen``."""
    p = argparse.ArgumentParser(prog="flwr-client keygen", description="Generate this hospital's SuperNode key "
                                "pair. The private key never leaves the hospital; send only the .pub file.")
    p.add_argument("--out", required=True, type=Path, help="directory for the key pair")
    p.add_argument("--name", default="supernode", help="file name of the key (e.g. the hospital code)")
    args = p.parse_args(argv)
    try:
        priv, pub = generate_keypair(args.out, args.name)
    except FileExistsError as exc:
        print(f"flwr-client keygen: {exc}")
        return 2
    print(f"private key {priv} (mode 0600; stays here: flwr-client --auth-key {priv})")
    print(f"public key  {pub} (send this to the coordinator to register):")
    print(pub.read_text().strip())
    return 0
