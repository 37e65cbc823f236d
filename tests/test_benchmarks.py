"""The benchmark scripts' own logic (fast parts only): the real 33-site MAMA-MIA partition, the process-tree
memory sampler, the overhead breakdown's arithmetic and the GPU script's CUDA-path check on CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_mama_mia_partition_is_the_real_33_sites() -> None:
    from bench_sites import mama_mia_partition

    from simulation.cohort_sites import load_mama_mia

    part = mama_mia_partition()
    table = load_mama_mia()
    labelled = table[(table["pcr"] == 0) | (table["pcr"] == 1)]
    assert len(part) == 33 and len({k.split("_", 1)[0] for k in part}) == 4
    assert sum(n for n, _ in part.values()) == int(labelled["site"].notna().sum())
    duke = labelled[labelled["dataset"] == "DUKE"]
    assert part[f"DUKE_{duke['site'].iloc[0]}"] == (len(duke), pytest.approx(float(duke["pcr"].mean())))


def test_peak_memory_counts_child_processes() -> None:
    from _bench import PeakMemory, tree_memory_mb

    before = tree_memory_mb()
    code = "import numpy as np, time; a = np.ones(200 * 2**20 // 8); time.sleep(3)"
    with PeakMemory(0.2) as mem:
        proc = subprocess.Popen([sys.executable, "-c", code])
        proc.wait(timeout=60)
    assert mem.samples >= 3
    assert mem.peak_mb - before > 150  # the child's 200 MB array was seen


def test_breakdown_parts_add_up_to_the_extra_time() -> None:
    from bench_federation import breakdown

    pool = {"wall_s": 10.0, "site_epoch_s": {"A": 1.0, "B": 2.0, "C": 3.0}}
    fed = {"wall_s": 20.0, "round_s": [4.0, 4.0]}
    wire = {"serialise_roundtrip_s": 0.1}
    b = breakdown(pool, fed, wire, 3)
    assert b["extra_s"] == 10.0 and b["outside_rounds_s"] == 12.0
    assert b["serialisation_s"] == pytest.approx(0.1 * 9 * 2) and b["straggler_wait_s"] == pytest.approx(2.0)
    assert sum(v for k, v in b.items() if k != "extra_s") == pytest.approx(b["extra_s"])


def test_gpu_script_cuda_check_runs_on_cpu() -> None:
    import torch
    from bench_gpu import cuda_check

    t0 = time.time()
    info = cuda_check(torch.device("cpu"))
    assert info["cuda_path_ok"] and info["conv3d_max_abs_err"] == 0.0 and time.time() - t0 < 60


def test_ray_address_env_joins_a_cluster() -> None:
    """FEDPCR_RAY_ADDRESS puts Ray's init address into the simulation backend config (unset: local Ray)."""
    import os

    code = "import simulation.federated as f; print(f.BACKEND_CONFIG.get('init_args'))"
    env = {**os.environ, "FEDPCR_RAY_ADDRESS": "auto"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("{'address': 'auto'}"), out.stderr[-2000:]
    env.pop("FEDPCR_RAY_ADDRESS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("None"), out.stderr[-2000:]


def test_bench_privacy_runs_every_combination() -> None:
    """The DP / SecAgg+ benchmark drives the real round code; a refactor of that code must not break it silently."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/bench_privacy.py", "--sites", "3", "--patients", "12",
                           "--rounds", "1"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "DP" not in line]
    assert [tuple(c.strip() for c in line.split("|")[1:3]) for line in table] == [
        ("no", "no"), ("no", "yes"), ("yes", "no"), ("yes", "yes")]
