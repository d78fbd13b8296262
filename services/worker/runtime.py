"""The worker process: one engine behind NATS, as prefill, decode, or both (colocated).

Only the engine loop touches the engine.  NATS handlers run on the event loop while a step runs
in a thread; they queue closures in the ``Inbox`` that the loop applies between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, NoReturn

from loraplex.adapters.disk_copies import DiskCopies
from loraplex.assignments import serve_control
from loraplex.bus import Bus
from loraplex.engine.failures import is_fatal
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import StepOutput
from loraplex.protocol import (
    AdapterEvent,
    Subjects,
    WorkerHeartbeat,
)
from loraplex.timeouts import cancel_requested, wait_for
from loraplex.worker.active import Active, ActiveTable
from loraplex.worker.adapter_pager import AdapterPager, Fetch
from loraplex.worker.control import Control
from loraplex.worker.inbox import Background, Inbox
from loraplex.worker.kv_receiver import KVReceiver
from loraplex.worker.kv_sender import KVSender
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.prepare import Preparation
from loraplex.worker.publish import Publisher
from loraplex.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
# Recovery fails each failed step's requests; when steps keep failing with no good step between,
# the engine itself is broken (not one request), and a restart is the way out.
MAX_FAILED_STEPS_IN_A_ROW = 3
EXIT_FLUSH_TIMEOUT_S = 1.0
DISK_COPIES_CHECK_S = 10.0  # confirm the adapter disk copies kept; recheck the ones read back


class Worker:
    """Owns the engine, its loop and heartbeats, and wires the parts around them: the adapter
    ``pager``, the ``inbox`` the loop drains, the table of requests (``active``, ``cancelled``,
    ``draining``) and, once started, the bus with its ``Publisher``, ``Control``, ``KVSender``
    and (decode roles) ``KVReceiver``."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: LLMEngine,
        fetch: Fetch | None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.s = settings
        self.id = settings.worker_id
        self.incarnation = uuid.uuid4().hex  # this process's, in every heartbeat
        self.engine = engine
        self.metrics = metrics or WorkerMetrics(self.id, settings.role)
        self.metrics.bind(engine)
        disk = None
        if settings.adapter_disk_cache and fetch is not None:
            try:
                disk = DiskCopies(
                    settings.adapter_disk_cache,
                    settings.adapter_disk_cache_mb * 2**20,
                    settings.adapter_disk_trust_s,
                )
            except OSError as e:  # a directory it cannot write: serve, without copies
                log.error("--adapter-disk-cache %s: %s; no adapter disk copies", e.filename, e)
        budget = settings.host_cache_mb * 2**20
        self.pager = AdapterPager(engine, fetch, budget, self.metrics, disk)
        self.inbox = Inbox()
        self.table = ActiveTable(self.pager)
        self.active: dict[str, Active] = self.table.active
        self.cancelled: OrderedDict[str, None] = self.table.cancelled
        self.background = Background()
        self.bus: Bus | None = None
        self.publisher: Publisher | None = None
        self.kv: KVReceiver | None = None  # decode side of the K/V hand-over
        self.kv_sender: KVSender | None = None
        self.control: Control | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def draining(self) -> bool:
        return self.table.draining

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.s
        self.bus = bus = await Bus.connect(s.nats_url, f"worker-{self.id}")
        self.publisher = publisher = Publisher(bus, self.id)
        self.metrics.terminal = publisher.terminal
        prep = Preparation(self.pager, self.engine, publisher)
        if s.role in ("decode", "both"):
            self.kv = KVReceiver(
                bus,
                self.id,
                s.kv_timeout_s,
                self.engine,
                self.table,
                self.inbox,
                self.background,
                prep,
                publisher,
                self.metrics,
            )
        self.kv_sender = KVSender(
            bus, self.id, s.kv_timeout_s, publisher, self.inbox, self.table, self.metrics
        )
        self.control = control = Control(
            self.id,
            s.role == "prefill",
            self.engine,
            self.pager,
            self.table,
            self.inbox,
            self.background,
            prep,
            publisher,
            self.kv,
        )
        await serve_control(bus, self.id, control.on_control)
        await bus.subscribe(Subjects.ADAPTER_EVENTS, control.on_adapter_event, AdapterEvent)
        if self.kv is not None:
            await self.kv.start()
        self._tasks = [
            asyncio.create_task(self._fatal_on_error(self._engine_loop(), "engine loop")),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        if self.pager.disk is not None:
            self._tasks.append(asyncio.create_task(self._disk_copies_loop()))
        await bus.flush()
        log.info("worker %s (%s) ready", self.id, s.role)

    async def drain_and_stop(self, timeout: float = 120.0) -> None:
        """SIGTERM: stop taking work (the heartbeat says so), finish what runs, then leave."""
        self.table.draining = True
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
        if self.publisher is not None:  # last messages still on their way to gateways
            await self.publisher.terminal.close(wait_s=2.0)
        if self.bus is not None:
            await self.bus.close()

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
            for fn in self.inbox.take():
                try:
                    fn()
                except Exception as e:
                    if is_fatal(e):
                        await self._exit(f"inbox command failed fatally: {e!r}")
                    log.exception("worker %s: inbox command failed", self.id)
            if self.inbox.outputs:
                await self.publish_outputs(self.inbox.take_outputs())
            if not self.engine.has_unfinished():
                await self.inbox.wait()
                continue
            try:
                # A step that raises fails its own requests inside the engine (error outputs);
                # only a fatal error (CUDA, out of memory) or a failed recovery gets out here.
                t0 = time.perf_counter()
                outputs = await asyncio.to_thread(self.engine.step)
                self.metrics.step(time.perf_counter() - t0)
            except Exception as e:
                log.exception("worker %s: engine step failed and could not recover", self.id)
                await self._exit(f"engine step failed: {e!r}")
            await self.publish_outputs(outputs)
            if self.engine.failed_steps_in_a_row >= MAX_FAILED_STEPS_IN_A_ROW:
                await self._exit(f"{MAX_FAILED_STEPS_IN_A_ROW} engine steps in a row failed")

    async def publish_outputs(self, outputs: list[StepOutput]) -> None:
        """Route one step's outputs: errors and tokens to the publisher, hand-overs to the K/V
        sender; finished and failed requests leave the table."""
        publisher, sender = self.publisher, self.kv_sender
        assert publisher is not None and sender is not None
        for out in outputs:
            req = self.active.get(out.request_id)
            if req is None:
                continue
            if out.num_cached_tokens is not None:  # this engine ran the prefill
                req.cached_tokens = out.num_cached_tokens
            if out.error is not None:  # the engine ended this request alone; the rest go on
                await publisher.fail(req, out.error_code, out.error, retryable=False)
                self.table.release(out.request_id)
                continue
            if out.handoff is not None:
                self.background.spawn(sender.ship(req, out.handoff))
                continue
            await publisher.tokens(req, out)
            if out.finished:
                self.table.release(out.request_id)

    async def _exit(self, why: str) -> NoReturn:
        """Leave now: the engine cannot be trusted with more work.  The supervisor restarts the
        worker; the scheduler re-dispatches or fails its requests when heartbeats stop.  What
        was published (the errors of the failed steps) is flushed first: os._exit drops it."""
        log.critical("worker %s: %s; exiting", self.id, why)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await wait_for(self.bus.flush(), EXIT_FLUSH_TIMEOUT_S)
        os._exit(1)

    async def _disk_copies_loop(self) -> None:
        while not cancel_requested():  # a cancel redis-py swallowed ends it too
            await asyncio.sleep(DISK_COPIES_CHECK_S)
            await self.check_disk_copies()

    async def check_disk_copies(self) -> None:
        """Retire what a recheck found replaced, and confirm the copies still current."""
        try:
            for old in await self.pager.recheck_disk_served():
                self.inbox.submit(lambda old=old: self.pager.retire(old))
            if self.bus is not None and self.bus.is_connected:  # it hears the events
                await self.pager.confirm_disk_copies()
        except Exception as e:  # a disk or store hiccup: the copies age, nothing else
            log.warning("adapter disk copies: %s", e)

    # ---- heartbeats --------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while not cancel_requested():
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
                adapter_slots_pinned=e.slots.pinned_slots(),
                prefix_cache_hit_tokens=e.scheduler.prefix_hit_tokens,
                prefix_cache_query_tokens=e.scheduler.prefix_query_tokens,
                active=list(self.active),
                incarnation=self.incarnation,
                acks_assignments=True,
            ),
        )
