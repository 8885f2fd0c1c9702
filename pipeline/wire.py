"""A preprocessed row's model inputs as bytes, for the trip through Ray's object store.

A little-endian uint32 header length, a JSON header naming each array's dtype, shape and offset,
then the arrays' raw bytes, each at a 64-byte boundary: one copy to write, one to read, and the
arrays arrive writable (torch warns on tensors over read-only memory).
"""

from __future__ import annotations

import json
import struct

import numpy as np

_HEADER_LENGTH = struct.Struct("<I")
_ALIGN = 64


def encode_inputs(arrays: dict[str, np.ndarray]) -> bytes:
    """One row's model inputs (name -> array) as bytes; ``decode_inputs`` reverses it."""
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}  # (ascontiguousarray makes 0-d arrays 1-d)
    layout, offset = [], 0
    for name, a in arrays.items():
        layout.append([name, a.dtype.str, list(a.shape), offset])
        offset += _aligned(a.nbytes)
    header = json.dumps(layout).encode()
    header_end = _HEADER_LENGTH.size + len(header)
    parts = [_HEADER_LENGTH.pack(len(header)), header, bytes(_aligned(header_end) - header_end)]
    for a in arrays.values():
        parts += [memoryview(a.reshape(-1)).cast("B"), bytes(_aligned(a.nbytes) - a.nbytes)]
    return b"".join(parts)  # the one copy


def _aligned(size: int) -> int:
    return size + -size % _ALIGN


def decode_inputs(data: bytes) -> dict[str, np.ndarray]:
    """The arrays ``encode_inputs`` wrote, writable, backed by one copy of ``data``."""
    buffer = bytearray(data)
    (length,) = _HEADER_LENGTH.unpack_from(buffer, 0)
    layout = json.loads(bytes(buffer[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length]))
    start = _aligned(_HEADER_LENGTH.size + length)
    out = {}
    for name, dtype, shape, at in layout:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + at).reshape(shape)
    return out
