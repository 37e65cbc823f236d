"""The site-cache format module: cheap prep-hash reader, atomic writes, one manifest column list, and the
partitioner writing caches through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import site_cache as sc
from common.data import load_cache
from simulation.partition import split_caches
from tests.cache_factory import make_cache


def test_read_prep_hash_loads_neither_torch_nor_pandas(tmp_path: Path) -> None:
    sc.write_prep_config(tmp_path, {"shape": [8, 8, 8]}, "abc123")
    code = ("import sys; from common.site_cache import read_prep_hash; h = read_prep_hash(sys.argv[1]); "
            "print(h, 'torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["abc123", "False", "False"]


def test_read_prep_hash_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / sc.PREP_CONFIG)):
        sc.read_prep_hash(tmp_path)
    (tmp_path / sc.PREP_CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="prep_config.json"):
        sc.read_prep_hash(tmp_path)
    (tmp_path / sc.PREP_CONFIG).write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="prep_config.json"):
        sc.read_prep_hash(tmp_path)
    (tmp_path / sc.PREP_CONFIG).write_text(json.dumps({"config": {}, "hash": ""}))
    with pytest.raises(ValueError, match="hash"):
        sc.read_prep_hash(tmp_path)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    rel = sc.write_volume(tmp_path, "P 1", np.ones((1, 2, 2, 2), np.float16))
    assert rel == sc.volume_path("P 1")
    with pytest.raises(ValueError):  # object arrays cannot be saved without pickle
        sc.write_volume(tmp_path, "P 1", np.array([{"a": 1}], dtype=object))
    np.testing.assert_array_equal(np.load(tmp_path / rel), np.ones((1, 2, 2, 2), np.float16))
    assert sorted(p.name for p in (tmp_path / sc.VOLUMES).iterdir()) == [Path(rel).name]
    sc.write_table(tmp_path / "t.csv", pd.DataFrame({"patient_id": ["a"], "x": [1]}))
    assert (tmp_path / "t.csv").read_text() == "patient_id,x\na,1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_one_manifest_column_list() -> None:
    assert set(sc.MANIFEST_REQUIRED) <= set(sc.MANIFEST_COLUMNS)
    assert sc.MANIFEST_REQUIRED == ("patient_id", "site", "label", "channels", "shape", "volume", "prep_hash")
    from common.preprocess import pipeline
    from common.preprocess.kinetics import KINETIC_COLUMNS

    assert pipeline.MANIFEST_COLUMNS is sc.MANIFEST_COLUMNS and KINETIC_COLUMNS is sc.KINETIC_FEATURES


def test_reader_names_file_and_missing_column(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, "S", n=4)
    man = pd.read_csv(cache / sc.MANIFEST).drop(columns=["prep_hash"])
    man.to_csv(cache / sc.MANIFEST, index=False)
    with pytest.raises(ValueError, match=r"manifest\.csv: missing columns \['prep_hash'\]"):
        load_cache(cache)


def test_split_caches_writes_complete_caches_in_place(tmp_path: Path) -> None:
    src = make_cache(tmp_path / "src", "ALL", n=8)
    ids = pd.read_csv(src / sc.MANIFEST, dtype={"patient_id": str})["patient_id"].tolist()
    assign = {pid: ("S1" if i % 2 else "S2") for i, pid in enumerate(ids)}
    out_root = tmp_path / "split"
    (out_root / "S1").mkdir(parents=True)
    (out_root / "S1" / "stale.txt").write_text("old")  # a previous split is replaced, not merged
    out = split_caches([src], assign, out_root)
    assert sorted(out) == ["S1", "S2"]
    assert sorted(os.listdir(out_root)) == ["S1", "S2"]  # no temporary folder left behind
    assert not (out_root / "S1" / "stale.txt").exists()
    for site, path in out.items():
        cache = load_cache(path)
        assert sorted(cache.ids) == sorted(p for p, s in assign.items() if s == site) and not cache.issues
        assert set(cache.manifest["site"]) == {site} and set(cache.clinical["site"]) == {site}
        assert sc.read_prep_hash(path) == sc.read_prep_hash(src)
        assert sc.read_report(path)["processed"] == sorted(cache.ids)
