"""The optional compact update encoding on the coordinator's side of the wire (``common.encoding``).

Outgoing train/evaluate messages carry their arrays in the run's encoding (the strategy keeps the exact
arrays); replies are decoded back to float32 before validation and aggregation. ``exact`` changes nothing.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from common.encoding import EXACT, decode_arrays, encode_arrays
from common.protocol import ARRAYS


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def encoded(messages: Iterable[Message], encoding: str) -> list[Message]:
    """Outgoing messages with their arrays in ``encoding`` (one encoding per distinct array record)."""
    messages = list(messages)
    if encoding == EXACT:
        return messages
    cache: dict[int, ArrayRecord] = {}
    for msg in messages:
        if ARRAYS in msg.content.array_records:
            rec = msg.content[ARRAYS]
            if id(rec) not in cache:
                cache[id(rec)] = _record(encode_arrays(_numpy(rec), encoding))
            msg.content[ARRAYS] = cache[id(rec)]
    return messages


def decoded(replies: list[Message], encoding: str) -> list[Message]:
    """Replies with their arrays back in float32 before anything checks or aggregates them."""
    if encoding != EXACT:
        for msg in replies:
            if not msg.has_error() and ARRAYS in msg.content.array_records:
                msg.content[ARRAYS] = _record(decode_arrays(_numpy(msg.content[ARRAYS]), encoding))
    return replies
