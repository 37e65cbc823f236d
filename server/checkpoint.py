"""Round checkpoints (global arrays + strategy state + progress) and the per-round metrics JSONL.

Layout under the run's ``out_dir``::

    checkpoint/round-0007.npz     everything a restart needs after round 7: ``last/<key>`` global arrays,
                                  ``best/<key>`` arrays of the best round, ``strategy/<attr>/<key>``
                                  server optimiser state (FedAdam/FedYogi moments)
    checkpoint/state.json         {"round": 7, "file": "round-0007.npz", "best_round", "best_auroc", ...}
    metrics.jsonl                 one JSON row per round (round 0 = the initial model)

Commit protocol: the round file is written to a temporary name, fsynced and renamed; then ``state.json``
(the commit point) the same way, then the directory is fsynced. A crash at any moment leaves either the
previous committed round or the new one, never a state that names a missing or torn file; the round
number is in both file name and state, so a restart never applies a round twice nor skips one. Rows of
``metrics.jsonl`` after the committed round (written by a run that died before committing) are dropped
on resume, and a half-written last line is ignored by the reader. Non-finite arrays or optimiser state
are never written (:class:`NonFiniteState`). The two newest round files are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("flwr")

STRATEGY_STATE_ATTRS = ("m_t", "v_t")  # flwr FedOpt family: first/second moments
KEEP_ROUND_FILES = 2


class NonFiniteState(ValueError):
    """A checkpoint would hold NaN/Inf (refused, so a resumed run never starts poisoned)."""


@dataclass
class Checkpoint:
    """What a restarted server needs to continue after ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    best_arrays: dict[str, np.ndarray]
    strategy_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """``write(fh)`` into a temporary sibling, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def round_file(round_: int) -> str:
    """The checkpoint file name of a round."""
    return f"round-{int(round_):04d}.npz"


def strategy_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """The optimiser state a strategy keeps between rounds (empty for FedAvg-like strategies)."""
    return {a: dict(getattr(strategy, a)) for a in STRATEGY_STATE_ATTRS if getattr(strategy, a, None)}


def restore_strategy_state(strategy: Any, state: dict[str, dict[str, np.ndarray]]) -> None:
    """Put saved optimiser moments back on a freshly built strategy (an empty state clears them)."""
    for attr in STRATEGY_STATE_ATTRS:
        if hasattr(strategy, attr):
            value = state.get(attr)
            setattr(strategy, attr, {k: np.asarray(v) for k, v in value.items()} if value else None)


def non_finite_keys(arrays: dict[str, np.ndarray]) -> list[str]:
    """Keys of floating arrays holding NaN/Inf."""
    return [k for k, v in arrays.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]


def save_checkpoint(out_dir: Path, round_: int, arrays: dict[str, np.ndarray],
                    best_arrays: dict[str, np.ndarray] | None, strategy_state_: dict[str, dict[str, np.ndarray]],
                    meta: dict[str, Any]) -> None:
    """Commit the checkpoint of a finished round (round file first, ``state.json`` last = commit point)."""
    ck = Path(out_dir) / "checkpoint"
    ck.mkdir(parents=True, exist_ok=True)
    flat = {f"last/{k}": v for k, v in arrays.items()}
    flat.update({f"best/{k}": v for k, v in (best_arrays if best_arrays is not None else arrays).items()})
    flat.update({f"strategy/{attr}/{k}": v for attr, d in strategy_state_.items() for k, v in d.items()})
    bad = non_finite_keys(flat)
    if bad:
        raise NonFiniteState(f"round {round_}: refusing to checkpoint non-finite values in {bad[:5]}")
    name = round_file(round_)
    _atomic_write_bytes(ck / name, lambda fh: np.savez(fh, **flat))
    state = {**meta, "round": int(round_), "file": name}
    _atomic_write_text(ck / "state.json", json.dumps(state, indent=2, default=_json_default))
    for old in sorted(ck.glob("round-*.npz"))[:-KEEP_ROUND_FILES]:
        old.unlink(missing_ok=True)


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The last committed checkpoint in ``out_dir``, or None; ValueError naming the file when it is damaged."""
    ck = Path(out_dir) / "checkpoint"
    if not (ck / "state.json").exists():
        return None
    try:
        meta = json.loads((ck / "state.json").read_text())
        flat = _load_npz(ck / meta["file"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {ck / 'state.json'} is damaged or names a missing round file: {exc}") from exc
    arrays = {k[5:]: v for k, v in flat.items() if k.startswith("last/")}
    best = {k[5:]: v for k, v in flat.items() if k.startswith("best/")} or dict(arrays)
    state: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if key.startswith("strategy/"):
            attr, name = key[9:].split("/", 1)
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
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (empty list when none); a torn (half-written) LAST line is dropped with a
    warning, a broken line elsewhere raises ValueError naming the line."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):
                log.warning("%s: ignoring a half-written last line (%d characters)", path, len(line))
                break
            raise ValueError(f"{path} line {i} is not valid JSON: {exc}") from exc
    return rows


def truncate_metrics(out_dir: Path, last_round: int) -> None:
    """Drop rows after ``last_round`` (written by a run that died before checkpointing them)."""
    rows, seen = [], set()
    for r in read_metrics(out_dir):
        if int(r["round"]) <= last_round and int(r["round"]) not in seen:
            seen.add(int(r["round"]))
            rows.append(r)
    path = Path(out_dir) / "metrics.jsonl"
    if path.exists():
        _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def lock_run_dir(out_dir: Path) -> Any:
    """Exclusive lock on ``out_dir`` for this process's lifetime (a second ServerApp on the same run fails fast)."""
    import fcntl

    fh = open(Path(out_dir) / ".serverapp.lock", "a+")  # noqa: SIM115 - kept open: the lock lives with it
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        raise RuntimeError(f"another ServerApp is already writing {out_dir} (lock {fh.name}); stop it first") from exc
    return fh
