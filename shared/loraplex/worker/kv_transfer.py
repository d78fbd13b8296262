"""K/V payloads on the wire: tensor <-> bytes, split below NATS max_payload, reassembled in order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from loraplex.config import DTYPES

# Room for the message envelope and field names around each chunk's bytes.
ENVELOPE_ROOM = 4096


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def bytes_to_tensor(data: bytes | bytearray, dtype: str, shape: list[int]) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(DTYPES[dtype]).reshape(shape)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def chunk_size_for(max_payload: int) -> int:
    if max_payload <= ENVELOPE_ROOM * 2:
        raise ValueError(f"NATS max_payload {max_payload} is too small for K/V transfer")
    return max_payload - ENVELOPE_ROOM


def split(data: bytes, chunk: int) -> list[bytes]:
    return [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]


@dataclass
class PendingTransfer:
    """Chunks of one request received so far; complete when every index has arrived."""

    num_chunks: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)

    def add(self, index: int, data: bytes) -> bool:
        if not 0 <= index < self.num_chunks:
            raise ValueError(f"chunk index {index} out of range 0..{self.num_chunks - 1}")
        self.parts[index] = data
        return len(self.parts) == self.num_chunks

    def payload(self) -> bytes:
        return b"".join(self.parts[i] for i in range(self.num_chunks))

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) > self.deadline
