"""Run the hospital's SuperNode as a watched child: restart it with backoff when it dies or its log says
it failed to join, give up with a clear message and a non-zero exit after ``max_wait`` seconds of failing.

A SuperNode that gave up activation can stay alive without ever joining (its SuperExec exits with 305);
the supervisor reads its output, and a line matching :data:`FATAL_PATTERNS` counts as a failure: the
whole SuperNode tree is stopped and started again. SIGTERM/SIGINT to ``flwr-client`` stop the tree and
exit. No torch, no Flower import.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence

#: SuperNode output that means "this process will never join" (restart it).
FATAL_PATTERNS = ("Failed to activate SuperNode", "exit code 305", "Exit Code: 305")
#: A SuperNode that ran this long before failing was healthy: the give-up clock starts again.
HEALTHY_AFTER_S = 60.0
#: Exit code of flwr-client when it gives up.
GAVE_UP = 3


@dataclass
class Policy:
    """Restart policy: give up after ``max_wait`` s of consecutive failures; backoff doubles up to ``max_backoff``."""

    max_wait: float = 600.0
    first_backoff: float = 1.0
    max_backoff: float = 30.0


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the SuperNode and every descendant (SuperExec, ClientApp), SIGKILL after ``timeout``."""
    from common.procs import kill_tree

    if proc.poll() is None:
        kill_tree([proc.pid], timeout)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _die_with_parent() -> None:
    """In the child: get SIGKILL when flwr-client dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _watch_output(proc: subprocess.Popen, fatal: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if any(p in line for p in FATAL_PATTERNS):
            fatal.set()


def supervise(cmd: Sequence[str], policy: Policy) -> int:
    """Run ``cmd`` (restarting it) until flwr-client is stopped by a signal or the policy gives up; returns the exit code."""
    stopping = threading.Event()
    current: list[subprocess.Popen] = []

    def _on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        for proc in current:
            _stop(proc)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    failing_since: float | None = None
    backoff = policy.first_backoff
    attempt = 0
    while not stopping.is_set():
        attempt += 1
        started = time.monotonic()
        fatal = threading.Event()
        # same process group as flwr-client (a group kill reaches it) and PDEATHSIG (a kill of flwr-client alone too)
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                preexec_fn=_die_with_parent)
        current[:] = [proc]
        reader = threading.Thread(target=_watch_output, args=(proc, fatal), daemon=True)
        reader.start()
        while proc.poll() is None and not fatal.is_set() and not stopping.is_set():
            time.sleep(0.5)
        _stop(proc)
        reader.join(5)
        if stopping.is_set():
            return 128 + signal.SIGTERM
        # any exit is restarted, code 0 included: a SuperNode whose SuperLink restarted (coordinator crash) exits
        # "gracefully" after a 401 heartbeat and must join the new one; only flwr-client's own stop ends the loop
        why = "failed to activate (cannot join the federation)" if fatal.is_set() else f"exited with code {proc.returncode}"
        now = time.monotonic()
        if failing_since is None or now - started >= HEALTHY_AFTER_S:
            failing_since, backoff = started, policy.first_backoff
        if now - failing_since >= policy.max_wait:
            print(f"flwr-client: GIVING UP: the SuperNode {why}; it has not stayed up for {now - failing_since:.0f} s "
                  f"(--max-wait-time {policy.max_wait:.0f} s, {attempt} attempt(s)). Check the --server address, "
                  "that the coordinator is running and that this hospital's key is registered.", file=sys.stderr,
                  flush=True)
            return GAVE_UP
        print(f"flwr-client: the SuperNode {why}; restarting in {backoff:.0f} s (attempt {attempt + 1}; giving up "
              f"after {policy.max_wait:.0f} s of failures)", file=sys.stderr, flush=True)
        if stopping.wait(backoff):
            return 128 + signal.SIGTERM
        backoff = min(backoff * 2, policy.max_backoff)
    return 128 + signal.SIGTERM
