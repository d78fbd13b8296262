"""How work reaches the engine loop and the event loop: ``Inbox`` (closures the engine loop runs
between steps, and the outputs they produce) and ``Background`` (tasks spawned on the event loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from loraplex.engine.outputs import StepOutput


class Inbox:
    """Owns the closures queued for the engine loop, the event that wakes it, and ``outputs``:
    step outputs produced by those closures (K/V injection) for the loop to publish.

    Only the engine loop touches the engine; NATS handlers ``submit`` closures here instead.
    """

    def __init__(self) -> None:
        self._queue: list[Callable[[], None]] = []
        self.outputs: list[StepOutput] = []
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, fn: Callable[[], None]) -> None:
        self._queue.append(fn)
        self._wake.set()

    def take(self) -> list[Callable[[], None]]:
        """The queued closures, in order; the queue starts empty again."""
        queued, self._queue = self._queue, []
        return queued

    def take_outputs(self) -> list[StepOutput]:
        outputs, self.outputs = self.outputs, []
        return outputs

    async def wait(self) -> None:
        """Sleep until something is submitted (at once if something already is)."""
        self._wake.clear()
        if not self._queue:
            await self._wake.wait()


class Background:
    """Owns the worker's fire-and-forget tasks on the event loop (kept referenced until done)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
