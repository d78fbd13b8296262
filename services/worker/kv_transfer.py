"""K/V payloads on the wire: tensor <-> bytes, split below NATS max_payload, reassembled in order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from loraplex.config import DTYPES

# Room for the message envelope and field names around each chunk's bytes.
ENVELOPE_ROOM = 4096
# A decode worker's refusal of a KVBegin for a request it already decodes: to a hand-over begun
# again after a connection drop, it means the last try's chunks arrived.
ALREADY_RUNS = "the request already runs here"


def tensor_to_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes on the host, without a copy for a contiguous CPU tensor (a GPU tensor
    is copied to the host once).  The view keeps the tensor alive; do not modify it meanwhile."""
    host = t.detach().to("cpu").contiguous()
    return memoryview(host.reshape(-1).view(torch.uint8).numpy())


def bytes_to_tensor(data: bytearray, dtype: str, shape: list[int]) -> torch.Tensor:
    """A tensor over ``data`` (no copy: the buffer must not be reused)."""
    flat = torch.frombuffer(data, dtype=torch.uint8)
    return flat.view(DTYPES[dtype]).reshape(shape)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def chunk_size_for(max_payload: int) -> int:
    if max_payload <= ENVELOPE_ROOM * 2:
        raise ValueError(f"NATS max_payload {max_payload} is too small for K/V transfer")
    return max_payload - ENVELOPE_ROOM


def num_chunks(nbytes: int, chunk: int) -> int:
    """How many messages ``split`` makes of ``nbytes`` bytes (an empty payload is one)."""
    return max(1, -(-nbytes // chunk))


def split(data: bytes | memoryview, chunk: int) -> list[memoryview]:
    """Chunk views of ``data`` (no copies: msgpack packs each straight from the payload)."""
    view = memoryview(data)
    return [view[i : i + chunk] for i in range(0, len(view), chunk)] or [memoryview(b"")]


@dataclass
class PendingTransfer:
    """One request's payload being received: chunks land at their offsets in one buffer.

    ``idle_timeout_s`` bounds the gap between chunks (not the whole transfer), so large payloads
    over a slow link still complete while a stalled sender is detected.
    """

    num_chunks: int
    total_bytes: int
    idle_timeout_s: float
    buffer: bytearray = field(init=False)
    received: set[int] = field(default_factory=set)
    deadline: float = 0.0
    _offset: int = 0

    def __post_init__(self) -> None:
        self.buffer = bytearray(self.total_bytes)
        self.deadline = time.monotonic() + self.idle_timeout_s

    def add(self, index: int, data: bytes, chunk_size: int) -> bool:
        """Place chunk ``index`` (all but the last are ``chunk_size`` bytes); True when complete."""
        if not 0 <= index < self.num_chunks:
            raise ValueError(f"chunk index {index} out of range 0..{self.num_chunks - 1}")
        start = index * chunk_size
        if start + len(data) > self.total_bytes:
            raise ValueError(f"chunk {index} overruns the {self.total_bytes}-byte payload")
        self.buffer[start : start + len(data)] = data
        self.received.add(index)
        self.deadline = time.monotonic() + self.idle_timeout_s
        return len(self.received) == self.num_chunks

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) > self.deadline


def payload_nbytes(dtype: str, shape: list[int]) -> int:
    n = torch.empty((), dtype=DTYPES[dtype]).element_size()
    for d in shape:
        n *= d
    return n
