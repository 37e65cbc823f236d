"""Stop a process and everything it started, even children that moved to their own session.

Flower's SuperLink starts its SuperExec detached (``start_new_session``) and the SuperExec starts the
ServerApp, so killing the SuperLink's process group leaves both running. Here the whole tree is found
by parent id (``/proc``) before anything is signalled. ``fedpcr-server`` records the pids it started in
``OUT/fedpcr-server.pids``; after a SIGKILL of ``fedpcr-server`` (no cleanup possible), running the same
command again stops the previous tree first (:func:`reap_recorded`). Linux only (``/proc``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterable

PIDS_FILE = "fedpcr-server.pids"
#: A recorded pid is only signalled when its command line contains one of these (pid reuse guard).
OUR_COMMANDS = ("flower-superlink", "flwr", "flower-superexec")


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (any session), parents before children."""
    children, out, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    """The process's command line ('' when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGTERM each pid and all its descendants, SIGKILL what is left after ``timeout``; returns the pids hit."""
    targets: list[int] = []
    for pid in pids:
        if alive(pid):
            targets += [pid, *descendants(pid)]
    targets = list(dict.fromkeys(targets))
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(alive(p) for p in targets):
            _reap_children()
            time.sleep(0.2)
        if not any(alive(p) for p in targets):
            break
    _reap_children()
    return targets


def _reap_children() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def record(out_dir: Path, pids: dict[str, int]) -> None:
    """Write the pids this fedpcr-server started (read back by :func:`reap_recorded`)."""
    (Path(out_dir) / PIDS_FILE).write_text(json.dumps(pids))


def reap_recorded(out_dir: Path) -> list[int]:
    """Stop what a previous (killed) fedpcr-server on this out-dir left running; returns the pids stopped."""
    path = Path(out_dir) / PIDS_FILE
    try:
        pids = [int(p) for p in json.loads(path.read_text()).values()]
    except (OSError, ValueError, AttributeError):
        return []
    ours = [p for p in pids if alive(p) and any(c in cmdline(p) for c in OUR_COMMANDS)]
    hit = kill_tree(ours) if ours else []
    path.unlink(missing_ok=True)
    return hit
