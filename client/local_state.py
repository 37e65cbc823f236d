"""What a hospital keeps on its own disk between restarts, and the check on an incoming global model.

FedBN's norm layers live in ``context.state`` (lost when the SuperNode restarts), so they are also
written, atomically (temporary file, fsync, rename), to ``<state-dir>/local-norm-<model hash>.npz``;
``flwr-client`` passes ``--state-dir`` (node config ``state-dir``). A global model holding NaN/Inf is
refused (error code ``BAD_MODEL``) before it touches the site's model. No torch import here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.protocol import BAD_MODEL

#: Node-config key: the directory this site keeps its local state in (written by ``flwr-client``).
STATE_DIR = "state-dir"


def check_finite_model(arrays: Any) -> None:
    """Raise ValueError-like refusal (code BAD_MODEL) naming the first array with NaN/Inf."""
    from client.site import SiteRefusal

    for key in arrays.keys():
        value = np.asarray(arrays[key].numpy())
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise SiteRefusal(f"global model refused: array {key!r} holds non-finite values (NaN/Inf); "
                              "this site does not train or evaluate on it", code=BAD_MODEL)


def norm_state_path(node_config: Mapping[str, Any], model_hash: str) -> Path | None:
    """Where this site persists its FedBN norm layers, or None when no state directory is configured."""
    root = node_config.get(STATE_DIR)
    return Path(str(root)) / f"local-norm-{model_hash}.npz" if root else None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_arrays(path: Path | None) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path``, or None when absent or unreadable (then the site starts from the global ones)."""
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None
