"""Slow end to end: ``python simulation/run.py --quick`` from a fresh directory, as the README gives it.

Excluded from the default suite (about 2 minutes more); run with ``python -m pytest -q -m slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "simulation/run.py", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report == out / "report.md" and report.exists()
    text = report.read_text()
    assert "SEMI-SYNTHETIC" in text and "FAILED" not in text
    results = pd.read_csv(out / "results.csv")
    held = results[(results.test_site == "DUKE") & (results.metric == "auroc")]
    # every quick arm (local models are named local-<SITE>) reports on the held-out institution
    methods = set(held.method)
    for arm in ("pooled", "fedavg", "fedadam", "clinical-lr", "kinetic"):
        assert arm in methods, (arm, sorted(methods))
    assert any(m.startswith("local-") for m in methods)
    assert held.value.between(0, 1).all()
    # the held-out institution trained nothing
    stored = [arm for path in (out / "arms").glob("*.json") for arm in json.loads(path.read_text())["arms"]]
    assert stored
    for arm in stored:
        assert arm["train_sites"] and "DUKE" not in arm["train_sites"], arm["arm_id"]
        assert set(arm["train_patients"]) == set(arm["train_sites"]), arm["arm_id"]
