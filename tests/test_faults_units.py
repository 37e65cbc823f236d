"""Reply validation, malformed replies, round-numbered checkpoints and the tolerant metrics reader, on real
flwr Message objects (no network). Each test can fail: the poisoned / malformed reply must be named and
kept out, the checkpoint must survive a torn write."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.metrics_counts import THRESHOLD_GRID
from common.protocol import counts_to_lists
from server.checkpoint import (
    NonFiniteState,
    append_metrics,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
)
from server.config import FederationConfig
from server.rounds import RunClock, missing_nodes, wait_for_nodes
from server.strategies import trim_fraction
from server.validation import validate_evaluate, validate_train

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
REF = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def _sent(node: int, kind: str = "train") -> Message:
    return Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                   message_type=kind)


def _train_reply(node: int, site: str, arrays: dict, n: int = 10, **extra_metrics) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5, **extra_metrics}),
                          "site": ConfigRecord({"name": site})})
    return Message(content=content, reply_to=_sent(node))


def _honest(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in REF.items()}


def _eval_reply(node: int, site: str, n: int = 10, n_pos: int = 4, **override) -> Message:
    scores = np.linspace(0.05, 0.95, n)
    y = np.array([1] * n_pos + [0] * (n - n_pos))
    tp = [(scores[y == 1] >= t).sum() for t in THRESHOLD_GRID]
    fp = [(scores[y == 0] >= t).sum() for t in THRESHOLD_GRID]
    counts = np.array([[a, b, (n - n_pos) - b, n_pos - a] for a, b in zip(tp, fp)], dtype=np.int64)
    metrics = {"num-examples": n, "n-pos": n_pos, "n-neg": n - n_pos, "loss": 0.6, **counts_to_lists(counts)}
    metrics.update(override)
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    return Message(content=content, reply_to=_sent(node, "evaluate"))


def test_poisoned_updates_rejected_and_named() -> None:
    replies = [_train_reply(1, "A", _honest(1)), _train_reply(2, "B", _honest(2)),
               _train_reply(3, "NANSITE", {**_honest(3), "w": np.full((4, 3), np.nan, np.float32)}),
               _train_reply(4, "BIG", {k: v * 1e6 for k, v in _honest(4).items()}),
               Message(error=Error(code=5, reason="node unavailable"), reply_to=_sent(5))]
    declared: dict[str, int] = {}
    check = validate_train(replies, REF, declared, norm_bound=10.0)
    assert [m.content["site"]["name"] for m in check.accepted] == ["A", "B"]
    reasons = {bad.site: bad.reason for bad in check.invalid}
    assert set(reasons) == {"NANSITE", "BIG"}
    assert "non-finite" in reasons["NANSITE"] and "'w'" in reasons["NANSITE"]
    assert "norm" in reasons["BIG"]
    assert declared == {"A": 10, "B": 10}


def test_peer_norm_bound_catches_a_moderate_outlier() -> None:
    # 30x an honest update: under the global-norm bound (norm 3.5 x 10) but far above the other sites' median
    delta = {k: 30 * (v - REF[k]) + REF[k] for k, v in _honest(9).items()}
    replies = [_train_reply(i, s, _honest(i)) for i, s in ((1, "A"), (2, "B"), (3, "C"))]
    replies.append(_train_reply(4, "LOUD", delta))
    check = validate_train(replies, REF, {}, norm_bound=10.0)
    assert [b.site for b in check.invalid] == ["LOUD"] and "other sites' median" in check.invalid[0].reason
    assert len(check.accepted) == 3


def test_wrong_shape_dtype_keys_and_inflated_size_rejected() -> None:
    declared = {"A": 10}
    replies = [
        _train_reply(1, "A", _honest(1), n=500),  # more patients than declared at the start
        _train_reply(2, "SHAPE", {**_honest(2), "b": np.zeros(4, np.float32)}),
        _train_reply(3, "DTYPE", {**_honest(3), "b": np.zeros(3, np.float64)}),
        _train_reply(4, "KEYS", {**_honest(4), "extra": np.zeros(1, np.float32)}),
        _train_reply(5, "METRIC", _honest(5), secret=1.0),
        _train_reply(6, "ZERO", _honest(6), n=0),
    ]
    check = validate_train(replies, REF, declared, norm_bound=10.0)
    assert check.accepted == []
    reasons = {b.site: b.reason for b in check.invalid}
    assert "declared" in reasons["A"] and "[4]" in reasons["SHAPE"] and "float64" in reasons["DTYPE"]
    assert "extra" in reasons["KEYS"] and "secret" in reasons["METRIC"] and "positive" in reasons["ZERO"]


def test_malformed_evaluate_replies_are_failures_not_crashes() -> None:
    good = _eval_reply(1, "A")
    short = _eval_reply(2, "SHORT")
    short.content["metrics"]["tp"] = list(short.content["metrics"]["tp"])[:-1]  # unequal lengths
    extra = _eval_reply(3, "EXTRA", **{"patient-scores": [0.1, 0.2]})
    wrong = _eval_reply(4, "WRONGTYPE", **{"num-examples": 2.5})
    inconsistent = _eval_reply(5, "SUMS", **{"num-examples": 11})
    no_metrics = Message(content=RecordDict({"site": ConfigRecord({"name": "EMPTY"})}), reply_to=_sent(6, "evaluate"))
    valid, invalid = validate_evaluate([good, short, extra, wrong, inconsistent, no_metrics])
    assert [m.content["site"]["name"] for m in valid] == ["A"]
    reasons = {b.site: b.reason for b in invalid}
    assert set(reasons) == {"SHORT", "EXTRA", "WRONGTYPE", "SUMS", "EMPTY"}
    assert "'tp'" in reasons["SHORT"] and "patient-scores" in reasons["EXTRA"]
    # and the server's own aggregation of the valid ones still works
    from server.aggregation import evaluate_replies

    ev = evaluate_replies(valid)
    assert ev.n_examples == 10
    # 10 scores 0.1 apart: no positive shares a grid cell with a negative, so the counts AUROC is exact (bound 0)
    assert ev.pooled_auroc_bound == 0.0 and ev.pooled_auroc == pytest.approx(0.0)


def test_trim_fraction_cuts_at_least_one_site() -> None:
    cfg = FederationConfig(strategy="fedtrimmedavg")
    assert trim_fraction(cfg, 2) is None
    for n in (3, 4, 5, 10):
        beta = trim_fraction(cfg, n)
        assert 0 < beta < 0.5 and int(beta * n) == max(1, int(0.2 * n))
    fedavg = FederationConfig(strategy="fedavg", robust_from=5)
    assert trim_fraction(fedavg, 4) is None and int(trim_fraction(fedavg, 5) * 5) == 1
    # a site already rejected by validation uses up the trimming budget: the 4 honest ones are averaged
    assert trim_fraction(fedavg, 4, n_rejected=1) is None
    assert int(trim_fraction(cfg, 9, n_rejected=1) * 9) == 1  # 10 answered: budget 2 per end, 1 used by validation
    assert trim_fraction(cfg, 8, n_rejected=2) is None
    assert trim_fraction(FederationConfig(strategy="fedadam"), 10) is None


def _ckpt(out: Path, rnd: int, value: float) -> None:
    arrays = {"w": np.full(3, value, np.float32)}
    save_checkpoint(out, rnd, arrays, arrays, {"m_t": {"w": np.zeros(3)}}, {"best_round": rnd})


def test_checkpoint_round_files_commit_point_and_no_nan(tmp_path: Path) -> None:
    _ckpt(tmp_path, 1, 1.0)
    _ckpt(tmp_path, 2, 2.0)
    _ckpt(tmp_path, 3, 3.0)
    ck = load_checkpoint(tmp_path)
    assert ck.round == 3 and ck.arrays["w"][0] == 3.0 and ck.meta["file"] == "round-0003.npz"
    assert sorted(p.name for p in (tmp_path / "checkpoint").glob("round-*.npz")) == ["round-0002.npz", "round-0003.npz"]
    # a crash after the round file but before state.json: round 4's file exists, the commit still says 3
    (tmp_path / "checkpoint" / "round-0004.npz").write_bytes(b"torn")
    assert load_checkpoint(tmp_path).round == 3
    # a leftover temp file from a crash mid-write does not matter either
    (tmp_path / "checkpoint" / ".state.json.tmp").write_text('{"round": 9')
    assert load_checkpoint(tmp_path).round == 3
    with pytest.raises(NonFiniteState, match="m_t"):
        save_checkpoint(tmp_path, 4, {"w": np.ones(3, np.float32)}, None, {"m_t": {"w": np.array([np.nan, 0, 0])}}, {})
    assert load_checkpoint(tmp_path).round == 3


def test_metrics_reader_drops_a_torn_last_line_and_resume_truncates(tmp_path: Path) -> None:
    for r in range(3):
        append_metrics(tmp_path, {"round": r, "auroc": math.nan})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "auro')  # SIGKILL mid-write
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[0]["auroc"] is None
    truncate_metrics(tmp_path, 1)  # the checkpoint says round 1 was the last committed
    assert [r["round"] for r in read_metrics(tmp_path)] == [0, 1]
    text = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text("garbage\n" + text)
    with pytest.raises(ValueError, match="line 1"):
        read_metrics(tmp_path)


class _Nodes:
    def __init__(self, schedule: list[list[int]]) -> None:
        self.schedule = schedule

    def get_node_ids(self) -> list[int]:
        return self.schedule.pop(0) if len(self.schedule) > 1 else self.schedule[0]


def test_wait_for_nodes_is_bounded() -> None:
    # enough after patience
    assert wait_for_nodes(_Nodes([[1], [1, 2]]), want=3, enough=2, patience=0.0, clock=RunClock(60), poll=0.01) == [1, 2]
    # never enough: returns [] at the run deadline instead of waiting forever
    assert wait_for_nodes(_Nodes([[1]]), want=3, enough=2, patience=0.0, clock=RunClock(0.2), poll=0.01) == []
    sent = [_sent(7), _sent(8)]
    assert missing_nodes(sent, [_train_reply(7, "A", REF)]) == [8]


def test_pooled_evaluation_with_an_opt_in_site_auroc_does_not_crash() -> None:
    """One site opts into sending its own AUROC, the others do not: the pooled counts still sum (the opt-in
    value is never averaged) instead of the ServerApp crashing on the missing key."""
    from flwr.app import MetricRecord, RecordDict

    from common.metrics_counts import THRESHOLD_GRID, auroc_from_counts, threshold_counts
    from common.protocol import counts_to_lists
    from server.aggregation import sum_counts_aggr

    rng = np.random.default_rng(0)
    records, total = [], 0
    for k in range(3):
        y = rng.integers(0, 2, 30).astype(float)
        s = np.clip(0.3 * y + rng.uniform(0, 0.7, 30), 0, 1)
        counts = np.asarray(threshold_counts(y, s, THRESHOLD_GRID))
        total = total + counts
        m = {"num-examples": 30, "n-pos": int(y.sum()), "n-neg": int(30 - y.sum()), "loss": 0.5,
             **counts_to_lists(counts)}
        if k == 0:
            m["site-auroc"] = 0.9
        records.append(RecordDict({"metrics": MetricRecord(m)}))
    out = sum_counts_aggr(records, "num-examples")
    assert "site-auroc" not in out and out["num-examples"] == 90
    assert out["auroc"] == pytest.approx(float(auroc_from_counts(total)))
