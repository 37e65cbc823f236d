"""Check every site reply before it reaches an aggregator; an invalid reply is that site's failure.

Train replies: exactly the expected records, arrays with the global model's keys / shapes / dtypes,
finite values, an update norm within ``norm_bound`` times the previous global model's norm and
within ``norm_bound`` times the median of the other sites' update norms, and a ``num-examples`` that is
a positive integer no larger than what the site declared in its first train reply of the run.
Evaluate replies: the count lists parse (equal lengths, the shared grid), every threshold's counts add
up to ``num-examples``, and no key outside the contract. Nothing here raises on a malformed message:
each problem becomes an :class:`Invalid` naming the site, the node and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from flwr.app import Message

from common.metrics_counts import THRESHOLD_GRID
from common.protocol import (
    ARRAYS,
    COUNT_KEYS,
    DELTA,
    EPSILON,
    LOSS,
    METRICS,
    N_NEG,
    N_POS,
    NUM_EXAMPLES,
    SITE,
    SITE_AUROC,
    TEST_PREFIX,
    TRAIN_LOSS,
    WITHHELD,
    counts_from_lists,
)

#: Metric keys a train reply may carry (anything else is a protocol violation).
TRAIN_METRIC_KEYS = frozenset({NUM_EXAMPLES, TRAIN_LOSS, EPSILON, DELTA})  # epsilon/delta: under DP
_EVAL_SPLIT_KEYS = (NUM_EXAMPLES, N_POS, N_NEG, WITHHELD, *COUNT_KEYS)
#: Metric keys an evaluate reply may carry (val keys + loss, and the same with the test prefix).
EVAL_METRIC_KEYS = frozenset({LOSS, SITE_AUROC, *_EVAL_SPLIT_KEYS, *(TEST_PREFIX + k for k in _EVAL_SPLIT_KEYS)})


@dataclass(frozen=True)
class Invalid:
    """One rejected reply: who sent it and why (goes to the log and to metrics.jsonl)."""

    node: int
    site: str
    phase: str
    reason: str

    def as_row(self) -> dict[str, Any]:
        """The metrics.jsonl form."""
        return {"node": self.node, "site": self.site, "phase": self.phase, "reason": self.reason}


def reply_site(msg: Message) -> str:
    """The site label of a reply, ``node-<id>`` when missing or malformed (never raises)."""
    try:
        rec = msg.content.config_records.get(SITE)
        if rec is not None and isinstance(rec.get("name"), str) and rec["name"]:
            return str(rec["name"])
    except Exception:  # noqa: BLE001 - a malformed reply must not crash the server
        pass
    return f"node-{msg.metadata.src_node_id}"


def _records(msg: Message, want_arrays: bool) -> tuple[Any, Any]:
    """(ArrayRecord or None, MetricRecord); ValueError on any other record layout."""
    content = msg.content
    if set(content.metric_records) != {METRICS}:
        raise ValueError(f"expected one MetricRecord {METRICS!r}, got {sorted(content.metric_records)}")
    arrays = set(content.array_records)
    if arrays != ({ARRAYS} if want_arrays else set()):
        raise ValueError(f"unexpected ArrayRecord(s) {sorted(arrays)}")
    extra = set(content.config_records) - {SITE}
    if extra:
        raise ValueError(f"unexpected ConfigRecord(s) {sorted(extra)}")
    return (content[ARRAYS] if want_arrays else None), content[METRICS]


def _count(metrics: Mapping[str, Any], key: str) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{key!r} must be a positive integer, got {value!r}")
    return int(value)


def _check_arrays(arrays: Any, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named numpy arrays matching ``reference`` in keys, shapes and dtypes, all finite."""
    keys = list(arrays.keys())
    if set(keys) != set(reference):
        missing, extra = sorted(set(reference) - set(keys)), sorted(set(keys) - set(reference))
        raise ValueError(f"array keys differ from the global model (missing {missing[:3]}, extra {extra[:3]})")
    out = {}
    for key in keys:
        value = np.asarray(arrays[key].numpy())
        ref = reference[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(f"array {key!r} is {value.dtype}{list(value.shape)}, expected {ref.dtype}{list(ref.shape)}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"array {key!r} holds non-finite values (NaN/Inf)")
        out[key] = value
    return out


def float_norm(arrays: Mapping[str, np.ndarray], minus: Mapping[str, np.ndarray] | None = None) -> float:
    """L2 norm over the floating-point arrays (of ``arrays - minus`` when given)."""
    total = 0.0
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        v = value.astype(np.float64) - (minus[key].astype(np.float64) if minus is not None else 0.0)
        total += float(np.square(v).sum())
    return math.sqrt(total)


@dataclass
class TrainCheck:
    """Validated train replies of one round: the accepted messages (site-sorted) and the rejections."""

    accepted: list[Message]
    invalid: list[Invalid]


def validate_train(replies: Sequence[Message], reference: Mapping[str, np.ndarray], declared: dict[str, int],
                   norm_bound: float) -> TrainCheck:
    """Accept or reject each train reply (see the module doc); records first-seen ``num-examples`` in ``declared``.

    ``reference`` is the global model the round started from. Accepted replies are sorted by site so the
    aggregate does not depend on arrival order.
    """
    ref_norm = float_norm(reference)
    candidates: list[tuple[Message, str, float]] = []
    invalid: list[Invalid] = []
    for msg in replies:
        if msg.has_error():
            continue  # error replies are logged as refusals by the caller
        site = reply_site(msg)
        try:
            arrays, metrics = _records(msg, want_arrays=True)
            extra = set(metrics.keys()) - TRAIN_METRIC_KEYS
            if extra:
                raise ValueError(f"unexpected metric key(s) {sorted(extra)}")
            n = _count(metrics, NUM_EXAMPLES)
            if site in declared and n > declared[site]:
                raise ValueError(f"num-examples {n} exceeds the {declared[site]} this site declared at the start")
            loss = metrics.get(TRAIN_LOSS, 0.0)
            if isinstance(loss, (list, bool)) or not math.isfinite(float(loss)):
                raise ValueError(f"train-loss {loss!r} is not a finite number")
            values = _check_arrays(arrays, reference)
            update = float_norm(values, reference)
            if norm_bound > 0 and ref_norm > 0 and update > norm_bound * ref_norm:
                raise ValueError(f"update norm {update:.3g} exceeds norm-bound {norm_bound:g} x global model norm "
                                 f"{ref_norm:.3g}")
        except Exception as exc:  # noqa: BLE001 - any malformed content is this site's failure
            invalid.append(Invalid(int(msg.metadata.src_node_id), site, "train", str(exc)))
            continue
        candidates.append((msg, site, update))
    accepted = _peer_norm_filter(candidates, norm_bound, invalid)
    for msg in accepted:
        declared.setdefault(reply_site(msg), int(msg.content[METRICS][NUM_EXAMPLES]))
    return TrainCheck(accepted=sorted(accepted, key=reply_site), invalid=invalid)


def _peer_norm_filter(candidates: list[tuple[Message, str, float]], norm_bound: float,
                      invalid: list[Invalid]) -> list[Message]:
    """Drop updates whose norm exceeds ``norm_bound`` x the median norm of the OTHER sites (needs >= 2 others)."""
    if norm_bound <= 0 or len(candidates) < 3:
        return [m for m, _, _ in candidates]
    keep = []
    for i, (msg, site, norm) in enumerate(candidates):
        others = float(np.median([n for j, (_, _, n) in enumerate(candidates) if j != i]))
        if others > 0 and norm > norm_bound * others:
            invalid.append(Invalid(int(msg.metadata.src_node_id), site, "train",
                                   f"update norm {norm:.3g} exceeds norm-bound {norm_bound:g} x the other sites' "
                                   f"median update norm {others:.3g}"))
        else:
            keep.append(msg)
    return keep


def check_evaluate(msg: Message) -> None:
    """Raise ValueError naming the problem when an evaluate reply breaks the contract."""
    _, metrics = _records(msg, want_arrays=False)
    extra = set(metrics.keys()) - EVAL_METRIC_KEYS
    if extra:
        raise ValueError(f"unexpected metric key(s) {sorted(extra)}")
    for prefix in ("", TEST_PREFIX):
        if prefix == TEST_PREFIX and not any(k.startswith(TEST_PREFIX) for k in metrics.keys()):
            continue
        withheld = int(metrics.get(prefix + WITHHELD, 0)) == 1  # too few per class: everything 0 (private_eval)
        n = 0 if withheld and metrics.get(prefix + NUM_EXAMPLES) == 0 else _count(metrics, prefix + NUM_EXAMPLES)
        counts = counts_from_lists(metrics, prefix, length=len(THRESHOLD_GRID))
        totals = counts.sum(axis=1)
        if withheld:
            if totals.any():
                raise ValueError(f"{prefix}counts must be all zero when {prefix}{WITHHELD} = 1")
        elif (totals != totals[0]).any():  # protected (noisy) counts keep one total at every threshold
            raise ValueError(f"{prefix}counts have a different total at different thresholds")
        for key in (N_POS, N_NEG):
            value = metrics.get(prefix + key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{prefix + key!r} must be a non-negative integer, got {value!r}")
        if int(metrics[prefix + N_POS]) + int(metrics[prefix + N_NEG]) != n:
            raise ValueError(f"{prefix}{N_POS} + {prefix}{N_NEG} != {prefix}{NUM_EXAMPLES}")
    if LOSS in metrics and (isinstance(metrics[LOSS], (list, bool)) or not math.isfinite(float(metrics[LOSS]))):
        raise ValueError(f"loss {metrics[LOSS]!r} is not a finite number")


def validate_evaluate(replies: Sequence[Message]) -> tuple[list[Message], list[Invalid]]:
    """(valid evaluate replies sorted by site, rejections); error replies are skipped (logged elsewhere)."""
    ok, invalid = [], []
    for msg in replies:
        if msg.has_error():
            continue
        try:
            check_evaluate(msg)
        except Exception as exc:  # noqa: BLE001
            invalid.append(Invalid(int(msg.metadata.src_node_id), reply_site(msg), "evaluate", str(exc)))
            continue
        ok.append(msg)
    return sorted(ok, key=reply_site), invalid
