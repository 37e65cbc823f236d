"""Compact update encodings (common.encoding) against independent references (numpy fp16, torch bf16),
their round-config key, and the server/client hooks that apply them to Flower ArrayRecords."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.encoding import BF16, ENCODINGS, EXACT, FP16, decode_arrays, encode_arrays, payload_bytes
from common.protocol import UPDATE_ENCODING, ProtocolError, RoundConfig


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(0, 0.1, (8, 3, 3, 3, 3)).astype(np.float32),
            "bn.running_var": rng.uniform(0.5, 2.0, 8).astype(np.float32),
            "bn.num_batches_tracked": np.array(1234, dtype=np.int64)}


def test_exact_is_identity() -> None:
    state = _state()
    out = decode_arrays(encode_arrays(state, EXACT), EXACT)
    assert all(np.array_equal(out[k], state[k]) and out[k].dtype == state[k].dtype for k in state)


def test_fp16_matches_numpy_and_halves_float_bytes() -> None:
    state = _state()
    enc = encode_arrays(state, FP16)
    assert enc["conv.weight"].dtype == np.float16 and enc["bn.num_batches_tracked"].dtype == np.int64
    dec = decode_arrays(enc, FP16)
    assert dec["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(dec["conv.weight"], state["conv.weight"].astype(np.float16).astype(np.float32))
    assert dec["bn.num_batches_tracked"] == 1234
    floats = payload_bytes({k: v for k, v in state.items() if v.dtype == np.float32})
    assert payload_bytes(enc) == floats // 2 + 8


def test_bf16_matches_torch_rounding() -> None:
    x = np.concatenate([_state()["conv.weight"].ravel(), [1e30, -3.0e-20, 0.0, 1.0 + 2 ** -8, np.inf]]).astype(np.float32)
    dec = decode_arrays(encode_arrays({"w": x}, BF16), BF16)["w"]
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(dec, ref)
    assert np.isnan(decode_arrays(encode_arrays({"w": np.array([np.nan], np.float32)}, BF16), BF16)["w"][0])


def test_fp16_out_of_range_array_goes_exact() -> None:
    big = np.array([1.0, 1e6], dtype=np.float32)
    enc = encode_arrays({"big": big, "ok": np.ones(3, np.float32)}, FP16)
    assert enc["big"].dtype == np.float32 and enc["ok"].dtype == np.float16
    np.testing.assert_array_equal(decode_arrays(enc, FP16)["big"], big)


def test_unknown_encoding_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="int8"):
        encode_arrays(_state(), "int8")
    with pytest.raises(ProtocolError, match=UPDATE_ENCODING):
        RoundConfig.from_dict({UPDATE_ENCODING: "int8"})


def test_round_config_key_sent_only_when_compact() -> None:
    assert UPDATE_ENCODING not in RoundConfig().to_dict()
    rc = RoundConfig(update_encoding=FP16)
    assert RoundConfig.from_dict(rc.to_dict()).update_encoding == FP16
    assert set(ENCODINGS) == {EXACT, FP16, BF16}


def test_server_and_client_hooks_roundtrip_flower_records() -> None:
    """Server encodes outgoing arrays, the site decodes, trains, encodes; the server decodes before aggregating."""
    import time

    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    from client.task import arrays_from_model, decode_record
    from server.app import _numpy, decoded, encoded
    from server.config import FederationConfig

    with pytest.raises(ValueError, match="update encoding"):
        FederationConfig(update_encoding="int8")
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32))
    exact = ArrayRecord(model.state_dict())
    def md(mid: str) -> Metadata:
        return Metadata(run_id=1, message_id=mid, src_node_id=1, dst_node_id=7, reply_to_message_id="",
                        group_id="", created_at=time.time(), ttl=3600.0, message_type="train")

    msg = Message(content=RecordDict({"arrays": exact, "config": ConfigRecord({})}), metadata=md("m1"))
    (sent,) = encoded([msg], FP16)
    wire = _numpy(sent.content["arrays"])
    assert wire["0.weight"].dtype == np.float16 and wire["1.num_batches_tracked"].dtype == np.int64
    assert payload_bytes(wire) < 0.51 * payload_bytes(_numpy(exact))
    received = decode_record(sent.content["arrays"], FP16)
    np.testing.assert_allclose(received["0.weight"].numpy(), model.state_dict()["0.weight"].numpy(), atol=1e-3)
    reply_arrays = arrays_from_model(model, BF16)
    assert _numpy(reply_arrays)["0.weight"].dtype == np.uint16
    reply = Message(content=RecordDict({"arrays": reply_arrays}), metadata=md("m2"))
    (back,) = decoded([reply], BF16)
    got = _numpy(back.content["arrays"])
    assert got["0.weight"].dtype == np.float32
    np.testing.assert_allclose(got["0.weight"], model.state_dict()["0.weight"].numpy(), rtol=2 ** -8)
