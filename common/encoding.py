"""Compact encodings of the model arrays a round ships (server -> site, site -> server).

``exact`` (the default) sends the arrays as they are. ``fp16`` and ``bf16`` halve every float32 array
on the wire and are decoded back to float32 at the receiver, so aggregation and training always work in
float32; integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are never touched. Lossy: fp16 keeps
11 significand bits (range +-65504; an array with a finite value beyond that range is sent exact), bf16
keeps 8 significand bits with float32's range. bf16 travels as its raw uint16 bit pattern (numpy has no
bfloat16), so under ``bf16`` a uint16 array is read as bf16 — a model state never holds uint16.

Flower-free on purpose (``common/``): both apps convert their ArrayRecords to named numpy arrays and
call :func:`encode_arrays` / :func:`decode_arrays`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

EXACT, FP16, BF16 = "exact", "fp16", "bf16"
#: Every encoding a run may select (run config / RoundConfig key ``update-encoding``).
ENCODINGS = (EXACT, FP16, BF16)
_FP16_MAX = float(np.finfo(np.float16).max)


def check_encoding(encoding: str) -> str:
    """``encoding`` if known; ValueError naming the choices otherwise."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown update encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    return encoding


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit pattern (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """bf16 bit pattern (uint16) -> float32 (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode_array(x: np.ndarray, encoding: str) -> np.ndarray:
    """One array as it travels under ``encoding`` (only float32/float64 arrays change)."""
    x = np.asarray(x)
    if encoding == EXACT or x.dtype not in (np.float32, np.float64):
        return x
    if encoding == FP16:
        finite = x[np.isfinite(x)]
        if finite.size and float(np.abs(finite).max()) > _FP16_MAX:
            return x.astype(np.float32)  # out of fp16 range: this array goes exact (as float32)
        return x.astype(np.float16)
    if encoding == BF16:
        return _to_bf16_bits(x.astype(np.float32))
    raise ValueError(check_encoding(encoding))


def decode_array(x: np.ndarray, encoding: str) -> np.ndarray:
    """Inverse of :func:`encode_array` up to the rounding: float16 / bf16 bits -> float32."""
    x = np.asarray(x)
    if encoding == FP16 and x.dtype == np.float16:
        return x.astype(np.float32)
    if encoding == BF16 and x.dtype == np.uint16:
        return _from_bf16_bits(x)
    check_encoding(encoding)
    return x


def encode_arrays(arrays: Mapping[str, np.ndarray], encoding: str) -> dict[str, np.ndarray]:
    """Named arrays (a state dict as numpy) as they travel under ``encoding``; order kept."""
    check_encoding(encoding)
    return {k: encode_array(v, encoding) for k, v in arrays.items()}


def decode_arrays(arrays: Mapping[str, np.ndarray], encoding: str) -> dict[str, np.ndarray]:
    """Named arrays received under ``encoding`` -> float32 / original integer arrays; order kept."""
    check_encoding(encoding)
    return {k: decode_array(v, encoding) for k, v in arrays.items()}


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Raw bytes of the arrays' data (no names or headers): what an encoding shrinks."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


__all__ = ["EXACT", "FP16", "BF16", "ENCODINGS", "check_encoding", "encode_array", "decode_array",
           "encode_arrays", "decode_arrays", "payload_bytes"]
