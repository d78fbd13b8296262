"""``wait_for`` without the race of Python 3.11's ``asyncio.wait_for``, and
``cancel_requested`` for loops that must outlive their own errors but not a cancel.

In 3.11, when the awaited future completes in the same loop iteration as the waiting task is
cancelled, ``asyncio.wait_for`` returns the result and the cancellation is lost (CPython
gh-86296, fixed in 3.12 by rebuilding it on ``asyncio.timeout``).  A task cancelled that way keeps
running: the gateway's per-choice stream reader, cancelled when its client left while a token
arrived, read on to ``max_tokens`` and held back the request's cancel (the intermittent lost
cancel of ``tests/hostile/test_disconnect.py``).  ``asyncio.timeout`` counts cancellations
correctly, so this is ``wait_for`` built on it, and every service uses this one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
        """``await aw`` for at most ``timeout`` seconds (``None``: no limit); raises
        ``TimeoutError`` (the same class as ``asyncio.TimeoutError``) when it runs out."""
        async with asyncio.timeout(timeout):
            return await aw

else:  # 3.10: no asyncio.timeout; asyncio.wait never swallows the caller's cancellation

    async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
        """``await aw`` for at most ``timeout`` seconds; raises ``asyncio.TimeoutError``."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except BaseException:
            task.cancel()
            raise
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise asyncio.TimeoutError
        return task.result()


def cancel_requested() -> bool:
    """Whether the running task was asked to stop.  A loop checks it each turn: a client
    library (redis-py, seen under load) can swallow the ``CancelledError`` it got, returning
    or raising an error of its own, and the loop would then run on forever while the shutdown
    that cancelled it waits (3.10 cannot tell: False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())
