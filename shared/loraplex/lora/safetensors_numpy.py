"""A torch-free safetensors reader: the header checked as strictly as the ``safetensors``
library checks it, and each floating-point tensor decoded to float32 numpy (BF16 and FP8
included, which numpy lacks), from bytes in memory or read one tensor at a time from a file.

The adapter-store and the gateway validate uploads with it without importing torch; workers
decode with it too and wrap the arrays with ``torch.from_numpy``, so there is one walk.
Every malformed input raises ``SafetensorsError``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound


class SafetensorsError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def _e4m3fn_table() -> np.ndarray:
    """float32 value of each float8 e4m3fn byte (bias 7, no infinities, NaN at S.1111.111)."""
    table = np.empty(256, dtype=np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exp, man = (byte >> 3) & 0xF, byte & 0x7
        if exp == 0xF and man == 0x7:
            table[byte] = np.nan
        elif exp == 0:
            table[byte] = sign * (man / 8.0) * 2.0**-6
        else:
            table[byte] = sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return table


_E4M3FN = _e4m3fn_table()

# dtype name -> (bytes per element, is floating point)
_DTYPES: dict[str, tuple[int, bool]] = {
    "BOOL": (1, False), "U8": (1, False), "I8": (1, False),
    "F8_E5M2": (1, True), "F8_E4M3": (1, True),
    "U16": (2, False), "I16": (2, False), "F16": (2, True), "BF16": (2, True),
    "U32": (4, False), "I32": (4, False), "F32": (4, True),
    "U64": (8, False), "I64": (8, False), "F64": (8, True),
}  # fmt: skip


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """raw: the tensor's bytes as uint8 [n * itemsize] -> float32 [n] (a new array)."""
    if dtype == "F32":
        return raw.view("<f4").astype(np.float32)
    if dtype == "F64":
        return raw.view("<f8").astype(np.float32)
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    if dtype == "BF16":  # the top half of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E5M2":  # the top byte of a float16
        return (raw.astype(np.uint16) << 8).view("<f2").astype(np.float32)
    if dtype == "F8_E4M3":
        return _E4M3FN[raw]
    raise SafetensorsError(f"dtype {dtype} is not floating point")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section
    end: int

    @property
    def is_float(self) -> bool:
        return _DTYPES[self.dtype][1]


def parse_header(header: bytes, data_bytes: int) -> dict[str, TensorInfo]:
    """The header JSON -> name -> TensorInfo, in file order; the tensors must tile the
    ``data_bytes`` of data exactly (no gap, no overlap), each as long as its shape and dtype."""
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too deep, a 5,000-digit int
        raise SafetensorsError(f"header is not JSON ({str(e)[:200]})") from None
    if not isinstance(meta, dict):
        raise SafetensorsError("header is not a JSON object")
    extra = meta.pop("__metadata__", {})
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    infos = {name: _info(name, entry) for name, entry in meta.items()}
    at = 0
    for name, info in sorted(infos.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != at:
            raise SafetensorsError(f"tensor {name!r} starts at byte {info.begin}, expected {at}")
        at = info.end
    if at != data_bytes:
        raise SafetensorsError(f"the tensors cover {at} bytes of data, the file has {data_bytes}")
    return infos


def _info(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPES:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
    ok_shape = isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    )
    ok_offsets = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )
    if not (ok_shape and ok_offsets):
        raise SafetensorsError(f"tensor {name!r}: bad shape {shape!r} or data_offsets {offsets!r}")
    numel = 1
    for d in shape:  # type: ignore[union-attr]
        numel *= d
    begin, end = offsets  # type: ignore[misc]
    if numel * _DTYPES[dtype][0] != end - begin:
        raise SafetensorsError(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype}")
    return TensorInfo(dtype, tuple(shape), begin, end)  # type: ignore[arg-type]


def _header_length(prefix: bytes, total: int) -> int:
    if len(prefix) < 8:
        raise SafetensorsError("shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES or 8 + n > total:
        raise SafetensorsError(f"header length {n} is beyond the file ({total} bytes)")
    return n


class SafetensorsBytes:
    """A whole file in memory (the worker's copy from the store)."""

    def __init__(self, data: bytes) -> None:
        n = _header_length(data, len(data))
        self.data = memoryview(data)[8 + n :]
        self.infos = parse_header(bytes(data[8 : 8 + n]), len(self.data))

    def float32(self, name: str) -> np.ndarray:
        """The tensor decoded to float32, shaped as the header says."""
        info = self.infos[name]
        raw = np.frombuffer(
            self.data, dtype=np.uint8, count=info.end - info.begin, offset=info.begin
        )
        return to_float32(raw, info.dtype).reshape(info.shape)


class SafetensorsFile:
    """A file on disk: the header now, each tensor read when asked (memory: one tensor)."""

    def __init__(self, handle: BinaryIO) -> None:
        total = os.fstat(handle.fileno()).st_size
        n = _header_length(handle.read(8), total)
        self.handle, self.start = handle, 8 + n
        self.infos = parse_header(handle.read(n), total - self.start)

    def float32(self, name: str) -> np.ndarray:
        info = self.infos[name]
        self.handle.seek(self.start + info.begin)
        raw = np.frombuffer(self.handle.read(info.end - info.begin), dtype=np.uint8)
        return to_float32(raw, info.dtype).reshape(info.shape)
