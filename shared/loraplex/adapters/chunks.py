"""Adapter weights as the store takes them (bytes, a binary file, or an iterable of byte
strings, sync or async), cut into the store's fixed-size chunks and handed out a batch at a
time, so staging a file into Redis holds one batch in memory, not the file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import BinaryIO, TypeAlias

Weights: TypeAlias = (
    bytes | bytearray | memoryview | BinaryIO | Iterable[bytes] | AsyncIterable[bytes]
)


def known_size(weights: Weights) -> int | None:
    """The size in bytes when it is known before reading (bytes, a regular file), else None."""
    if isinstance(weights, bytes | bytearray | memoryview):
        return memoryview(weights).nbytes
    if hasattr(weights, "fileno") and hasattr(weights, "tell"):
        try:
            return os.fstat(weights.fileno()).st_size - weights.tell()  # type: ignore[union-attr]
        except (OSError, ValueError):
            return None
    return None


async def batches(
    weights: Weights, chunk_size: int, batch_bytes: int
) -> AsyncIterator[list[memoryview]]:
    """Lists of consecutive ``chunk_size`` chunks (the last one shorter), about ``batch_bytes``
    per list; a file is read in a thread, one batch per read."""
    step = chunk_size * max(1, batch_bytes // chunk_size)
    if isinstance(weights, bytes | bytearray | memoryview):
        view = memoryview(weights).cast("B")
        for start in range(0, len(view), step):
            yield _cut(view[start : start + step], chunk_size)
    elif hasattr(weights, "read"):
        while data := await asyncio.to_thread(_read_full, weights, step):
            yield _cut(memoryview(data), chunk_size)
    else:
        pending = bytearray()
        async for piece in _iterate(weights):
            pending += piece
            while len(pending) >= step:
                yield _cut(memoryview(_take(pending, step)), chunk_size)
        if pending:
            yield _cut(memoryview(_take(pending, len(pending))), chunk_size)


def _cut(view: memoryview, chunk_size: int) -> list[memoryview]:
    return [view[i : i + chunk_size] for i in range(0, len(view), chunk_size)]


def _take(pending: bytearray, n: int) -> bytes:
    with memoryview(pending) as view:
        data = view[:n].tobytes()
    del pending[:n]
    return data


def _read_full(f: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``f``, fewer only at its end (a regular file: one read, no copy)."""
    data = f.read(n)
    if not data or len(data) == n:
        return data
    parts = [data]
    while (got := sum(map(len, parts))) < n and (more := f.read(n - got)):
        parts.append(more)
    return b"".join(parts)


async def _iterate(weights: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(weights, AsyncIterable):
        async for piece in weights:
            yield piece
    else:
        for piece in weights:
            yield piece
