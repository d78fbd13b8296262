"""Waiting for a condition in the scheduler's service tests (real NATS, so not instantaneous)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(
    cond: Callable[[], object], timeout: float = 10.0, what: str = "condition not met in time"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)
