"""``loraplex.timeouts.wait_for``: a cancel that arrives as the awaited value does is never lost.

Python 3.11's ``asyncio.wait_for`` returns the value and drops the cancel in that case (CPython
gh-86296): the gateway's stream readers then read on after their client left, and the request's
cancel waited for ``max_tokens``.  Every service waits through ``loraplex.timeouts.wait_for``.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from loraplex.timeouts import wait_for

ROOT = Path(__file__).resolve().parent.parent


async def test_a_cancel_that_arrives_with_the_value_ends_the_task() -> None:
    still_running = 0
    for _ in range(200):
        queue: asyncio.Queue[int] = asyncio.Queue()
        got: list[int] = []

        async def reader(q: asyncio.Queue[int] = queue, out: list[int] = got) -> None:
            while True:
                out.append(await wait_for(q.get(), 10.0))

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0)  # the reader waits in q.get()
        queue.put_nowait(1)  # its getter completes...
        task.cancel()  # ...in the same loop iteration as the cancel
        await asyncio.sleep(0.005)
        if not task.done():
            still_running += 1
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert still_running == 0, f"{still_running} of 200 readers ignored their cancel"


async def test_the_value_or_a_timeout() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(7)
    assert await wait_for(queue.get(), 1.0) == 7
    assert await wait_for(queue.put(8), None) is None
    with pytest.raises(asyncio.TimeoutError):
        await wait_for(asyncio.sleep(10), 0.05)
    with pytest.raises(TimeoutError):  # the same class on 3.11+
        await wait_for(queue.join(), 0.05)


def test_no_service_waits_with_asyncio_wait_for() -> None:
    """New code must not bring the racy ``asyncio.wait_for`` back."""
    call = re.compile(r"\basyncio\.wait_for\(")
    offenders = []
    for folder in ("services", "shared", "tooling"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "timeouts.py":
                continue
            if call.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
