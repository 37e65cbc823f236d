"""The site audit log: hash-chained, verified by ``fedpcr audit verify``; editing, deleting or truncating
any entry is detected and named; the audit mod records the instruction and the reply (also of a crash)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from client.audit import make_audit_mod
from common.audit_chain import AuditChainError, append_entry, log_path, main as audit_main, read_entries, verify_log
from common.protocol import SITE_ERROR


def _log(tmp_path: Path, n: int = 4) -> Path:
    path = log_path(tmp_path, 7)
    for i in range(n):
        append_entry(path, {"kind": "reply", "run_id": 1, "server_round": i, "message_type": "train", "error": None,
                            "arrays": {"arrays": {"w": {"bytes": 100 * (i + 1)}}}, "metrics": {"metrics": {"loss": 0.5}}})
    return path


def test_chain_verifies_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _log(tmp_path)
    entries = verify_log(path)
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[1]["prev"] == entries[0]["hash"]
    assert audit_main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "chain intact" in out and "run 1 round 2 train: 300 array bytes; metrics loss=0.5" in out


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_last", "swap"])
def test_tampering_fails_naming_the_entry(tmp_path: Path, tamper: str, capsys: pytest.CaptureFixture) -> None:
    path = _log(tmp_path)
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[2])
        entry["metrics"]["metrics"]["loss"] = 0.1
        lines[2] = json.dumps(entry, sort_keys=True)
        want = "line 3: entry seq 2 was edited"
    elif tamper == "delete_middle":
        del lines[1]
        want = "entry 1 deleted"
    elif tamper == "delete_last":
        del lines[3]
        want = "entry seq 3 (the last) was deleted"
    else:
        lines[1], lines[2] = lines[2], lines[1]
        want = "line 2: entry seq 2 where seq 1 was expected"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditChainError, match="audit-7.jsonl"):
        verify_log(path)
    assert audit_main(["verify", str(tmp_path)]) == 1
    assert want in capsys.readouterr().out


def _msg(kind: str = "train") -> Message:
    md = Metadata(run_id=5, message_id="m1", src_node_id=1, dst_node_id=7, reply_to_message_id="", group_id="",
                  created_at=time.time(), ttl=3600.0, message_type=kind)
    arrays = ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))})
    return Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 3, "lr": 0.01})}),
                   metadata=md)


def test_mod_records_instruction_and_reply(tmp_path: Path) -> None:
    ctx = Context(run_id=5, node_id=7, node_config={}, state=RecordDict(), run_config={})
    sent = Array(np.zeros((2, 3), dtype=np.float32))
    reply_content = RecordDict({"arrays": ArrayRecord({"w": sent}),
                                "metrics": MetricRecord({"num-examples": 9, "train-loss": 0.25})})
    mod = make_audit_mod(tmp_path)
    reply = mod(_msg(), ctx, lambda m, c: Message(content=reply_content, reply_to=m))
    assert not reply.has_error()
    got = read_entries(tmp_path)
    assert [e["kind"] for e in got] == ["instruction", "reply"]
    inst, rep = got
    assert inst["server_round"] == 3 and inst["configs"]["config"] == {"server-round": 3, "lr": 0.01}
    assert inst["arrays"]["arrays"]["w"]["shape"] == [2, 3] and inst["model_hash"]
    assert rep["metrics"]["metrics"] == {"num-examples": 9, "train-loss": 0.25}
    assert rep["arrays"]["arrays"]["w"] == {"dtype": "float32", "shape": [2, 3], "bytes": len(sent.data),
                                            "sha256": hashlib.sha256(sent.data).hexdigest()}


def test_exception_escaping_the_app_is_audited_and_coded(tmp_path: Path) -> None:
    """Any exception (here with a patient ID and a path in its text) becomes SITE_ERROR without that text."""
    ctx = Context(run_id=5, node_id=7, node_config={}, state=RecordDict(), run_config={})

    def crash(m: Message, c: Context) -> Message:
        raise RuntimeError("cannot read /data/site/volumes/Breast_MRI_042_ab12.npy")

    reply = make_audit_mod(tmp_path)(_msg(), ctx, crash)
    assert reply.has_error() and reply.error.code == SITE_ERROR
    assert "Breast_MRI" not in reply.error.reason and "/data" not in reply.error.reason
    assert "RuntimeError" in reply.error.reason
    rep = read_entries(tmp_path, "reply")[0]
    assert rep["error"]["code"] == SITE_ERROR
    assert "Breast_MRI" not in path_text(tmp_path)


def path_text(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.glob("audit-*"))
