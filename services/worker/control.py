"""``Control``: the control messages a worker receives: assignments, cancels, prefetches and
adapter events.

An assignment pages the request's adapter in and compiles its output constraint beside the engine
loop, then queues a closure that adds the request to the engine between steps.
"""

from __future__ import annotations

import logging

from loraplex.adapters.keys import adapter_id
from loraplex.engine.llm_engine import LLMEngine
from loraplex.errors import LoraplexError
from loraplex.protocol import AdapterEvent, CancelRequest, PrefetchAdapter, PrefillAssign
from loraplex.worker.active import Active, ActiveTable
from loraplex.worker.adapter_pager import AdapterPager
from loraplex.worker.inbox import Background, Inbox
from loraplex.worker.kv_receiver import KVReceiver
from loraplex.worker.prepare import Preparation
from loraplex.worker.publish import Publisher

log = logging.getLogger(__name__)


def placed_again(req: Active, msg: PrefillAssign) -> bool:
    """A newer assignment of a request this worker still prefills: its decode worker was
    declared dead (often only restarting) and the scheduler chose another.  The K/V goes where
    the newer one says, if it has not left yet (True); else the scheduler sees the hand-off name
    the old decode worker and recovers the request when the new one never holds it."""
    newer = (msg.epoch, msg.attempt) > req.assignment
    if not (newer and req.decode_worker and msg.decode_worker and not req.shipping):
        return False
    log.info("%s placed again: its K/V goes to %s, not %s",
             msg.request.request_id, msg.decode_worker, req.decode_worker)  # fmt: skip
    req.decode_worker, req.assignment = msg.decode_worker, (msg.epoch, msg.attempt)
    return True


class Control:
    """Handles the worker's control subject and adapter events: admits assignments into the
    active table and, through the inbox, the engine; cancels (engine, K/V receiver, table);
    prefetches and retires adapters in the pager.  ``prefill_only``: this worker only prefills."""

    def __init__(
        self,
        worker_id: str,
        prefill_only: bool,
        engine: LLMEngine,
        pager: AdapterPager,
        table: ActiveTable,
        inbox: Inbox,
        background: Background,
        prep: Preparation,
        publisher: Publisher,
        kv: KVReceiver | None,
    ) -> None:
        self._id = worker_id
        self._prefill_only = prefill_only
        self._engine = engine
        self._pager = pager
        self._table = table
        self._inbox = inbox
        self._bg = background
        self._prep = prep
        self._publisher = publisher
        self._kv = kv
        # The newest scheduler lease epoch seen in an assignment: an older one comes from a
        # deposed leader (scheduler replicas) and is ignored, so no request runs twice.
        self.epoch = 0

    async def on_control(self, msg: PrefillAssign | CancelRequest | PrefetchAdapter) -> None:
        if isinstance(msg, PrefillAssign):
            if msg.epoch < self.epoch:
                log.warning("ignored %s from a deposed scheduler (epoch %d < %d)",
                            msg.request.request_id, msg.epoch, self.epoch)  # fmt: skip
                return
            self.epoch = msg.epoch
            rid = msg.request.request_id
            if not self._table.first_assignment(rid, msg.epoch, msg.attempt):
                return  # a resent copy (its answer was lost): taken already
            if rid in self._table.active:  # the same request must not run twice here
                placed_again(self._table.active[rid], msg)
                return
            # Not awaited: paging one request's adapter must not hold up the next message.
            self._bg.spawn(self._on_assign(msg))
        elif isinstance(msg, CancelRequest):
            self._inbox.submit(lambda: self.cancel(msg.request_id, msg.remember))
        elif isinstance(msg, PrefetchAdapter):
            self._bg.spawn(self._prefetch(msg.adapter))

    async def _prefetch(self, name: str) -> None:
        try:
            r = await self._pager.prepare(name)
        except LoraplexError as e:
            log.info("prefetch of %s failed: %s", name, e)
            return
        self._inbox.submit(lambda: self._pager.install(r))

    async def _on_assign(self, msg: PrefillAssign) -> None:
        sub = msg.request
        rid = sub.request_id
        resumed = list(msg.generated)  # a migrated request's tokens so far
        req = Active(sub, None, msg.decode_worker, len(resumed), resumed)
        req.assignment = (msg.epoch, msg.attempt)
        table = self._table
        if rid in table.cancelled:
            return  # its cancel overtook it
        if table.draining:
            await self._publisher.fail(req, 503, f"worker {self._id} is draining", retryable=True)
            return
        table.active[rid] = req  # from here a cancel finds it, even while its adapter pages in
        r = await self._prep.resolve_adapter(req)
        if r is False:
            table.active.pop(rid, None)
            return
        if await self._prep.compile_grammar(req) is not None:
            table.active.pop(rid, None)
            return
        prefill_only = self._prefill_only or bool(msg.decode_worker)

        def add() -> None:
            if table.active.get(rid) is not req:
                return  # cancelled while the adapter paged in
            try:
                self._prep.attach_adapter(req, r)  # type: ignore[arg-type]
                self._engine.add_request(
                    rid,
                    sub.prompt_token_ids,
                    sub.sampling,
                    req.adapter_key,
                    prefill_only,
                    resumed,
                    sub.cache_salt,
                )
            except LoraplexError as e:
                table.release(rid)
                self._bg.spawn(self._publisher.fail(req, 400, str(e), retryable=False))

        self._inbox.submit(add)

    def cancel(self, request_id: str, remember: bool = True) -> None:
        """Engine loop only: abort the request everywhere and (``remember``) refuse its id from
        now on; a preempted request may be placed here again."""
        if remember:
            self._table.remember_cancel(request_id)
        self._engine.abort(request_id)
        if self._kv is not None:
            self._kv.cancel(request_id)
        self._table.release(request_id)

    async def on_adapter_event(self, event: AdapterEvent) -> None:
        if event.kind in ("replaced", "deleted", "unloaded"):
            # at once: new requests must not resolve to it
            for old in self._pager.invalidate(adapter_id(event.owner, event.name)):
                self._inbox.submit(lambda old=old: self._pager.retire(old))
