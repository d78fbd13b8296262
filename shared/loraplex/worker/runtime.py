"""The worker process: one engine behind NATS, as prefill, decode, or both (colocated).

Only the engine loop touches the engine.  NATS handlers run on the event loop while a step runs
in a thread; they queue closures in ``inbox`` that the loop applies between steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from loraplex.bus import Bus
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import StepOutput
from loraplex.errors import AdapterNotFoundError, LoraplexError
from loraplex.protocol import (
    AdapterEvent,
    CancelRequest,
    PrefetchAdapter,
    PrefillAssign,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitRequest,
    TokenDelta,
    WorkerHeartbeat,
)
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.worker.adapter_pager import AdapterPager, Fetch, Resolved
from loraplex.worker.logprobs_wire import list_to_wire
from loraplex.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Active:
    """A request this worker is serving."""

    submit: SubmitRequest
    adapter_key: str | None
    decode_worker: str = ""
    generated: int = 0


class Worker:
    def __init__(self, settings: WorkerSettings, engine: LLMEngine, fetch: Fetch | None) -> None:
        self.s = settings
        self.id = settings.worker_id
        self.engine = engine
        self.pager = AdapterPager(engine, fetch, settings.host_cache_mb * 2**20)
        self.inbox: list[Callable[[], None]] = []
        self.outbox: list[StepOutput] = []  # outputs produced by inbox commands (K/V injection)
        self.wake = asyncio.Event()
        self.active: dict[str, Active] = {}
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
                except Exception:
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
                outputs = await asyncio.to_thread(self.engine.step)
            except Exception:
                # A broken engine cannot be trusted with more work: exit so the supervisor restarts
                # us; the scheduler re-dispatches or fails our requests when heartbeats stop.
                log.exception("worker %s: engine step failed; exiting", self.id)
                os._exit(1)
            await self.publish_outputs(outputs)

    async def publish_outputs(self, outputs: list[StepOutput]) -> None:
        assert self.bus is not None
        for out in outputs:
            req = self.active.get(out.request_id)
            if req is None:
                continue
            if out.handoff is not None:
                self.spawn(self._ship_kv(self, req, out.handoff))
                continue
            req.generated += len(out.new_token_ids)
            sub = req.submit
            await self.bus.publish(
                Subjects.stream(sub.gateway_id),
                TokenDelta(
                    sub.request_id,
                    out.new_token_ids,
                    out.new_text,
                    out.finish_reason,
                    prompt_tokens=len(sub.prompt_token_ids),
                    completion_tokens=req.generated,
                    logprobs=list_to_wire(out.logprobs),
                    prompt_logprobs=list_to_wire(out.prompt_logprobs),
                ),
            )
            await self.progress(
                req, "finished" if out.finished else "tokens", new_tokens=len(out.new_token_ids)
            )
            if out.finished:
                self.release(out.request_id)

    async def progress(
        self, req: Active, event: str, new_tokens: int = 0, message: str = ""
    ) -> None:
        assert self.bus is not None
        sub = req.submit
        await self.bus.publish(
            Subjects.USAGE,
            RequestProgress(
                sub.request_id,
                sub.tenant,
                self.id,
                event,
                new_tokens=new_tokens,
                prompt_tokens=len(sub.prompt_token_ids),
                completion_tokens=req.generated,
                decode_worker=req.decode_worker,
                message=message,
            ),
        )

    async def fail(self, req: Active, code: int, message: str, retryable: bool) -> None:
        """Report a request we cannot serve: retryable failures go back to the scheduler only."""
        assert self.bus is not None
        if not retryable:
            sub = req.submit
            await self.bus.publish(
                Subjects.stream(sub.gateway_id), RequestError(sub.request_id, code, message)
            )
        await self.progress(req, "failed" if retryable else "error", message=message)

    def release(self, request_id: str) -> None:
        """Forget a request (engine loop only): unpin its adapter."""
        req = self.active.pop(request_id, None)
        if req is not None and req.adapter_key is not None:
            self.pager.unpin(req.adapter_key)

    # ---- control messages --------------------------------------------------------------------
    async def _on_control(self, msg: PrefillAssign | CancelRequest | PrefetchAdapter) -> None:
        if isinstance(msg, PrefillAssign):
            # Not awaited: paging one request's adapter must not hold up the next message.
            self.spawn(self._on_assign(msg))
        elif isinstance(msg, CancelRequest):
            self.submit(lambda: self._cancel(msg.request_id))
        elif isinstance(msg, PrefetchAdapter):
            self.spawn(self._prefetch(msg.adapter))

    async def _prefetch(self, name: str) -> None:
        try:
            r = await self.pager.prepare(name)
        except LoraplexError as e:
            log.info("prefetch of %s failed: %s", name, e)
            return
        self.submit(lambda: self.pager.install(r))

    async def resolve_adapter(self, req: Active) -> Resolved | None | bool:
        """Page in the request's adapter beside the engine loop.

        Returns the resolution, None for a base-model request, or False after reporting an error.
        """
        name = req.submit.adapter
        if name is None:
            return None
        try:
            return await self.pager.prepare(name)
        except AdapterNotFoundError as e:
            await self.fail(req, 404, str(e), retryable=False)
        except LoraplexError as e:
            await self.fail(req, 400, str(e), retryable=False)
        return False

    async def compile_grammar(self, req: Active, report: bool = True) -> bool:
        """Compile the request's output constraint in a thread, beside the engine loop (the first
        one also loads the tokenizer into xgrammar), so the engine only finds it in the cache.
        False (after reporting a 400 when ``report``) if it does not compile."""
        so = req.submit.sampling.structured_outputs
        if so is None:
            return True
        try:
            params = StructuredOutputsParams.from_spec(so.kind, so.spec)
            await asyncio.to_thread(self.engine.grammars.compile, params)
        except LoraplexError as e:
            if report:
                await self.fail(req, 400, str(e), retryable=False)
            return False
        return True

    def attach_adapter(self, req: Active, r: Resolved | None) -> None:
        """Engine loop: make the adapter resident and pin it for this request."""
        if r is not None:
            self.pager.install(r)
            self.pager.pin(r.key)
            req.adapter_key = r.key

    async def _on_assign(self, msg: PrefillAssign) -> None:
        sub = msg.request
        rid = sub.request_id
        req = Active(sub, None, decode_worker=msg.decode_worker)
        if self.draining:
            await self.fail(req, 503, f"worker {self.id} is draining", retryable=True)
            return
        self.active[rid] = req  # from here a cancel finds it, even while its adapter pages in
        r = await self.resolve_adapter(req)
        if r is False:
            self.active.pop(rid, None)
            return
        if not await self.compile_grammar(req):
            self.active.pop(rid, None)
            return
        prefill_only = self.s.role == "prefill" or bool(msg.decode_worker)

        def add() -> None:
            if self.active.get(rid) is not req:
                return  # cancelled while the adapter paged in
            try:
                self.attach_adapter(req, r)  # type: ignore[arg-type]
                self.engine.add_request(
                    rid,
                    sub.prompt_token_ids,
                    sub.sampling.to_params(),
                    req.adapter_key,
                    prefill_only,
                )
            except LoraplexError as e:
                self.release(rid)
                self.spawn(self.fail(req, 400, str(e), retryable=False))

        self.submit(add)

    def _cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)
        if self.kv is not None:
            self.kv.cancel(request_id)
        self.release(request_id)

    async def _on_adapter_event(self, event: AdapterEvent) -> None:
        if event.kind in ("replaced", "deleted"):
            old = self.pager.invalidate(event.name)  # at once: new requests must not resolve to it
            if old is not None:
                self.submit(lambda: self.pager.retire(old))

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
