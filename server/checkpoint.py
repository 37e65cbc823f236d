"""Round checkpoints (global arrays + strategy state + progress) and the per-round metrics JSONL.

Layout under the run's ``out_dir``::

    checkpoint/last.npz           global arrays after the last finished round
    checkpoint/best.npz           global arrays of the best round (pooled validation AUROC)
    checkpoint/strategy.npz       server optimiser state (FedAdam/FedYogi moments), ``<attr>/<key>``
    checkpoint/state.json         {"round", "best_round", "best_auroc", "strategy", "config_hash", ...}
    metrics.jsonl                 one JSON row per round (round 0 = the initial model)

Every file is written to a temporary name and renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STRATEGY_STATE_ATTRS = ("m_t", "v_t")  # flwr FedOpt family: first/second moments


@dataclass
class Checkpoint:
    """What a restarted server needs to continue after ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    best_arrays: dict[str, np.ndarray]
    strategy_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def strategy_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """The optimiser state a strategy keeps between rounds (empty for FedAvg-like strategies)."""
    return {a: dict(getattr(strategy, a)) for a in STRATEGY_STATE_ATTRS if getattr(strategy, a, None)}


def restore_strategy_state(strategy: Any, state: dict[str, dict[str, np.ndarray]]) -> None:
    """Put saved optimiser moments back on a freshly built strategy."""
    for attr, value in state.items():
        if hasattr(strategy, attr):
            setattr(strategy, attr, {k: np.asarray(v) for k, v in value.items()})


def save_checkpoint(out_dir: Path, round_: int, arrays: dict[str, np.ndarray],
                    best_arrays: dict[str, np.ndarray] | None, strategy_state_: dict[str, dict[str, np.ndarray]],
                    meta: dict[str, Any]) -> None:
    """Write the checkpoint of a finished round (arrays first, ``state.json`` last = commit point)."""
    ck = Path(out_dir) / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    _atomic_savez(ck / "last.npz", arrays)
    if best_arrays is not None:
        _atomic_savez(ck / "best.npz", best_arrays)
    flat = {f"{attr}/{k}": v for attr, d in strategy_state_.items() for k, v in d.items()}
    _atomic_savez(ck / "strategy.npz", flat)
    _atomic_write_text(ck / "state.json", json.dumps({**meta, "round": int(round_)}, indent=2, default=_json_default))


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The last committed checkpoint in ``out_dir``, or None."""
    ck = Path(out_dir) / "checkpoint"
    if not (ck / "state.json").exists():
        return None
    meta = json.loads((ck / "state.json").read_text())
    arrays = _load_npz(ck / "last.npz")
    best = _load_npz(ck / "best.npz") if (ck / "best.npz").exists() else dict(arrays)
    state: dict[str, dict[str, np.ndarray]] = {}
    if (ck / "strategy.npz").exists():
        for key, value in _load_npz(ck / "strategy.npz").items():
            attr, name = key.split("/", 1)
            state.setdefault(attr, {})[name] = value
    return Checkpoint(round=int(meta["round"]), arrays=arrays, best_arrays=best, strategy_state=state, meta=meta)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the JSONL stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def append_metrics(out_dir: Path, row: dict[str, Any]) -> None:
    """Append one round's row to ``metrics.jsonl``."""
    path = Path(out_dir) / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(_clean(row), default=_json_default) + "\n")


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (empty list when none)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out_dir: Path, last_round: int) -> None:
    """Drop rows after ``last_round`` (written by a run that died before checkpointing them)."""
    rows = [r for r in read_metrics(out_dir) if int(r["round"]) <= last_round]
    path = Path(out_dir) / "metrics.jsonl"
    if path.exists():
        _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
