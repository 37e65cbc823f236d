"""A hospital refuses a round whose prep/model hash differs from its own, or whose config it does not
understand, BEFORE torch (or any data) is loaded: the real ClientApp is called in a fresh interpreter and
``sys.modules`` is inspected afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import PrepConfig
from common.protocol import BAD_CONFIG, REFUSED

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, time
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from client.app import make_client_app

cache, config, kind = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
ctx = Context(run_id=1, node_id=7, node_config={"data-path": cache, "site-name": "HOSP"}, state=RecordDict(),
              run_config={"seed": 0, "strategy": "a-server-only-typo-is-not-read-here"})
md = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7, reply_to_message_id="", group_id="",
              created_at=time.time(), ttl=3600.0, message_type=kind)
msg = Message(content=RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord(config)}), metadata=md)
reply = make_client_app()(msg, ctx)
print(json.dumps({"error": reply.has_error(), "code": reply.error.code if reply.has_error() else None,
                  "reason": reply.error.reason if reply.has_error() else None,
                  "torch": "torch" in sys.modules, "pandas_data": "common.data" in sys.modules}))
"""


def _call(cache: Path, config: dict, kind: str = "train") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), json.dumps(config), kind], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    (tmp_path / "prep_config.json").write_text(json.dumps({"config": {}, "hash": PrepConfig().hash()}))
    return tmp_path


def test_prep_hash_mismatch_refused_before_torch(cache: Path) -> None:
    out = _call(cache, {"server-round": 1, "prep-hash": "0000", "model-hash": "x"})
    assert out["error"] and out["code"] == REFUSED
    assert "preprocessing hash mismatch" in out["reason"] and "0000" in out["reason"]
    assert PrepConfig().hash() in out["reason"] and "HOSP" in out["reason"]
    assert not out["torch"] and not out["pandas_data"]


def test_model_hash_mismatch_refused_before_torch(cache: Path) -> None:
    out = _call(cache, {"server-round": 1, "prep-hash": PrepConfig().hash(), "model-hash": "1111"}, "evaluate")
    assert out["error"] and out["code"] == REFUSED and "model hash mismatch" in out["reason"]
    assert not out["torch"]


def test_unknown_config_key_refused_before_torch(cache: Path) -> None:
    out = _call(cache, {"server-round": 1, "prep-hash": PrepConfig().hash(), "clip-norm": 1.0})
    assert out["error"] and out["code"] == BAD_CONFIG and "clip-norm" in out["reason"]
    assert not out["torch"]


def test_missing_cache_file_refused_naming_it(tmp_path: Path) -> None:
    out = _call(tmp_path / "nowhere", {"server-round": 1, "prep-hash": "a", "model-hash": "b"})
    # the coordinator learns that the data is missing, never the site's path (that stays in the site's log)
    assert out["error"] and out["code"] == REFUSED and "missing or unreadable" in out["reason"]
    assert str(tmp_path) not in out["reason"] and "nowhere" not in out["reason"]
    assert not out["torch"]
