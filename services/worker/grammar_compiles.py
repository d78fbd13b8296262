"""Output constraints compiled beside the engine loop, bounded in time and in threads.

The gateway only parses a constraint; compiling it against the vocabulary is the worker's, and
some legal constraints take minutes (red team: a flat schema of 2,400 optional properties, 70 KB,
took 67 s on the demo model's vocabulary; 3,000 took 195 s; 40,000 short choices 36 s).  Before,
that compile had no limit, and a decode worker ran it inside its K/V subject's handler, so every
other tenant's hand-over to that worker waited behind it and failed with a 503.

So a compile gets ``LORAPLEX_GRAMMAR_COMPILE_S`` (5 s, half the default ``--kv-timeout``, so that a
constraint the prefill worker compiled in time also compiles in time on the decode worker within
a hand-over): over it, the request fails with a 400 (``CompileTooCostly``).  At most
``COMPILE_THREADS`` compiles run at once; a request whose time ran out while it waited for one
fails with a retryable 503 (``CompileBusy``: not its fault).  Requests with the same constraint
share one compile (a hand-over that begins again does not start another).  A compile that ran out
cannot be stopped (xgrammar has no cancel): it finishes in its thread, and its result lands in
xgrammar's cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from loraplex import env
from loraplex.errors import CapacityError, InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.timeouts import wait_for

log = logging.getLogger(__name__)

COMPILE_THREADS = 2


class CompileTooCostly(InvalidRequestError):
    """The constraint's compile ran past the limit: the request's fault, a 400."""


class CompileBusy(CapacityError):
    """The limit passed while the compile waited for a thread: a retryable 503."""


class _Compile:
    """One constraint's compile, shared by every request that waits for it."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.started = False  # it has a thread (its time counts against the constraint)
        self.waiters = 0


class GrammarCompiles:
    """``compile`` runs ``compile_fn(so)`` in a thread, at most ``threads`` at once, shared by
    identical constraints, and gives each caller at most ``timeout_s``."""

    def __init__(
        self,
        compile_fn: Callable[[StructuredOutputsParams], Any],
        timeout_s: float | None = None,
        threads: int = COMPILE_THREADS,
        setup_fn: Callable[[], None] | None = None,
    ) -> None:
        self._compile_fn = compile_fn
        self._setup_fn = setup_fn  # once, before the first compile, outside every time limit
        self._setup: asyncio.Task[None] | None = None
        self.timeout_s = env.GRAMMAR_COMPILE_S.get() if timeout_s is None else timeout_s
        self._slots = asyncio.Semaphore(threads)
        self._running: dict[tuple[str, str], _Compile] = {}

    async def compile(self, so: StructuredOutputsParams) -> None:
        """Raises ``CompileTooCostly``, ``CompileBusy`` or what the compile raised
        (``InvalidRequestError`` for a constraint that does not compile)."""
        if self._setup_fn is not None:
            if self._setup is None:
                self._setup = asyncio.create_task(asyncio.to_thread(self._setup_fn))
            await asyncio.shield(self._setup)  # the first request pays it, untimed
        key = (so.kind, so.spec)
        job = self._running.get(key)
        if job is None:
            job = self._running[key] = _Compile()
            job.task = asyncio.create_task(self._run(job, so))
            job.task.add_done_callback(lambda t, key=key: self._finished(key, t))
        job.waiters += 1
        try:
            await wait_for(asyncio.shield(job.task), self.timeout_s)  # type: ignore[arg-type]
        except TimeoutError:
            if not job.started:
                if job.waiters == 1:
                    job.task.cancel()  # type: ignore[union-attr]  # nobody else waits for it
                raise CompileBusy(
                    "the worker is busy compiling other output constraints; try again"
                ) from None
            log.warning("output constraint (%s) still compiling after %gs", so.kind, self.timeout_s)
            raise CompileTooCostly(
                f"the {so.kind} constraint is too costly to compile: over {self.timeout_s:g} s "
                "(simplify it: fewer properties, choices or alternatives)"
            ) from None
        finally:
            job.waiters -= 1

    async def _run(self, job: _Compile, so: StructuredOutputsParams) -> None:
        async with self._slots:
            job.started = True
            await asyncio.to_thread(self._compile_fn, so)

    def _finished(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a compile every waiter gave up on is not an error
