"""The worker process: one engine behind NATS, as prefill, decode, or both (colocated).

Only the engine loop touches the engine.  NATS handlers run on the event loop while a step runs
in a thread; they queue closures in ``inbox`` that the loop applies between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

from loraplex.bus import Bus
from loraplex.engine.failures import is_fatal
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import StepOutput
from loraplex.protocol import (
    AdapterEvent,
    CancelRequest,
    PrefetchAdapter,
    PrefillAssign,
    Subjects,
    SubmitRequest,
    WorkerHeartbeat,
)
from loraplex.worker.adapter_pager import AdapterPager, Fetch
from loraplex.worker.control import ControlMixin
from loraplex.worker.publish import PublishMixin
from loraplex.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
# Recovery fails each failed step's requests; when steps keep failing with no good step between,
# the engine itself is broken (not one request), and a restart is the way out.
MAX_FAILED_STEPS_IN_A_ROW = 3
EXIT_FLUSH_TIMEOUT_S = 1.0


@dataclass
class Active:
    """A request this worker is serving."""

    submit: SubmitRequest
    adapter_key: str | None
    decode_worker: str = ""
    generated: int = 0


class Worker(ControlMixin, PublishMixin):
    """One engine behind NATS; control handlers in ``control.py``, publishing in ``publish.py``."""

    def __init__(self, settings: WorkerSettings, engine: LLMEngine, fetch: Fetch | None) -> None:
        self.s = settings
        self.id = settings.worker_id
        self.engine = engine
        self.pager = AdapterPager(engine, fetch, settings.host_cache_mb * 2**20)
        self.inbox: list[Callable[[], None]] = []
        self.outbox: list[StepOutput] = []  # outputs produced by inbox commands (K/V injection)
        self.wake = asyncio.Event()
        self.active: dict[str, Active] = {}
        # Recently cancelled request ids: an assignment or K/V hand-over that arrives after its
        # cancel (they cross on different subjects) is refused instead of generating for nobody.
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.draining = False
        self.bus: Bus | None = None
        self._tasks: list[asyncio.Task] = []
        self._bg: set[asyncio.Task] = set()
        self.kv = None  # decode side of the K/V hand-over (worker.kv_receiver.KVReceiver)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        from loraplex.worker.kv_receiver import KVReceiver
        from loraplex.worker.kv_sender import ship_kv

        self._ship_kv = ship_kv
        self.bus = await Bus.connect(self.s.nats_url, f"worker-{self.id}")
        await self.bus.subscribe(
            Subjects.worker(self.id),
            self._on_control,
            (PrefillAssign, CancelRequest, PrefetchAdapter),
        )
        await self.bus.subscribe(Subjects.ADAPTER_EVENTS, self._on_adapter_event, AdapterEvent)
        if self.s.role in ("decode", "both"):
            self.kv = KVReceiver(self)
            await self.kv.start()
        self._tasks = [
            asyncio.create_task(self._fatal_on_error(self._engine_loop(), "engine loop")),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        await self.bus.flush()
        log.info("worker %s (%s) ready", self.id, self.s.role)

    async def drain_and_stop(self, timeout: float = 120.0) -> None:
        """SIGTERM: stop taking work (the heartbeat says so), finish what runs, then leave."""
        self.draining = True
        await self._send_heartbeat()
        deadline = time.monotonic() + timeout
        while (self.active or self.engine.has_unfinished()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.kv is not None:
            self.kv.stop()
        if self.bus is not None:
            await self.bus.close()

    def submit(self, fn: Callable[[], None]) -> None:
        self.inbox.append(fn)
        self.wake.set()

    def spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _fatal_on_error(self, loop: Coroutine[Any, Any, None], what: str) -> None:
        """Run a loop the worker cannot live without.  If it raises, exit: a worker whose loop
        died would keep heart-beating (and listing its requests) while serving nothing, so its
        requests would hang; once it is gone the scheduler recovers them and a supervisor
        restarts it."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("worker %s: %s failed; exiting", self.id, what)
            os._exit(1)

    # ---- engine loop -------------------------------------------------------------------------
    async def _engine_loop(self) -> None:
        while True:
            inbox, self.inbox = self.inbox, []
            for fn in inbox:
                try:
                    fn()
                except Exception as e:
                    if is_fatal(e):
                        await self._exit(f"inbox command failed fatally: {e!r}")
                    log.exception("worker %s: inbox command failed", self.id)
            if self.outbox:
                outputs, self.outbox = self.outbox, []
                await self.publish_outputs(outputs)
            if not self.engine.has_unfinished():
                self.wake.clear()
                if not self.inbox:
                    await self.wake.wait()
                continue
            try:
                # A step that raises fails its own requests inside the engine (error outputs);
                # only a fatal error (CUDA, out of memory) or a failed recovery gets out here.
                outputs = await asyncio.to_thread(self.engine.step)
            except Exception as e:
                log.exception("worker %s: engine step failed and could not recover", self.id)
                await self._exit(f"engine step failed: {e!r}")
            await self.publish_outputs(outputs)
            if self.engine.failed_steps_in_a_row >= MAX_FAILED_STEPS_IN_A_ROW:
                await self._exit(f"{MAX_FAILED_STEPS_IN_A_ROW} engine steps in a row failed")

    async def _exit(self, why: str) -> NoReturn:
        """Leave now: the engine cannot be trusted with more work.  The supervisor restarts the
        worker; the scheduler re-dispatches or fails its requests when heartbeats stop.  What
        was published (the errors of the failed steps) is flushed first: os._exit drops it."""
        log.critical("worker %s: %s; exiting", self.id, why)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bus.flush(), EXIT_FLUSH_TIMEOUT_S)
        os._exit(1)

    def release(self, request_id: str) -> None:
        """Forget a request (engine loop only): unpin its adapter."""
        req = self.active.pop(request_id, None)
        if req is not None and req.adapter_key is not None:
            self.pager.unpin(req.adapter_key)

    # ---- heartbeats --------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._send_heartbeat()
            except Exception as e:  # NATS reconnecting: keep trying
                log.debug("heartbeat failed: %s", e)
            await asyncio.sleep(self.s.heartbeat_interval_s)

    async def _send_heartbeat(self) -> None:
        assert self.bus is not None
        e = self.engine
        await self.bus.publish(
            Subjects.HEARTBEAT,
            WorkerHeartbeat(
                worker_id=self.id,
                role=self.s.role,
                free_blocks=e.allocator.num_free,
                total_blocks=e.allocator.num_blocks,
                block_size=e.config.block_size,
                running=len(e.scheduler.running) + len(e.scheduler.ready),
                waiting=len(e.scheduler.waiting),
                max_num_seqs=e.config.max_num_seqs,
                adapters=self.pager.names(),
                draining=self.draining,
                ts=time.time(),
                adapter_slots_used=len(e.slots.resident()),
                adapter_slots_total=e.slots.num_slots,
                prefix_cache_hit_tokens=e.scheduler.prefix_hit_tokens,
                prefix_cache_query_tokens=e.scheduler.prefix_query_tokens,
                active=list(self.active),
            ),
        )
