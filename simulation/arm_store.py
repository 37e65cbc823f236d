"""Resume store of finished arms: ``<out>/arms/<arm_id>.json``, written atomically, reused while the
settings fingerprint matches (a crashed or interrupted run picks up where it stopped)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from simulation.arm_result import ArmResult, json_default


def run_cached(arms_dir: Path, arm_id: str, compute: Callable[[], list[ArmResult] | ArmResult], *,
               resume: bool = True, fingerprint: str = "") -> list[ArmResult]:
    """Return the arms stored in ``arms_dir/<arm_id>.json`` or compute and store them (resume after a crash).

    A stored arm made with another ``fingerprint`` (settings that change its numbers) is recomputed.
    """
    path = Path(arms_dir) / f"{_safe(arm_id)}.json"
    if resume and path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("fingerprint", "") == fingerprint:
                return [ArmResult(**d) for d in stored["arms"]]
            print(f"resume: {path} was made with other settings; recomputing", file=sys.stderr)
        except (ValueError, KeyError, TypeError) as exc:
            print(f"resume: {path} unreadable ({exc}); recomputing", file=sys.stderr)
    result = compute()
    arms = result if isinstance(result, list) else [result]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"arm_id": arm_id, "fingerprint": fingerprint, "arms": [asdict(a) for a in arms]},
                              default=json_default))
    tmp.replace(path)
    return arms


def _safe(text: str) -> str:
    """File-name-safe arm id."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)
