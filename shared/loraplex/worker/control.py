"""Control messages a worker receives, as methods of ``Worker``: assignments, cancels, prefetches
and adapter events.

An assignment pages the request's adapter in and compiles its output constraint beside the engine
loop, then queues a closure that adds the request to the engine between steps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from loraplex.adapters.keys import adapter_id
from loraplex.errors import AdapterNotFoundError, LoraplexError
from loraplex.protocol import AdapterEvent, CancelRequest, PrefetchAdapter, PrefillAssign
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.worker.adapter_pager import Resolved

if TYPE_CHECKING:
    from loraplex.worker.runtime import Active, Worker

log = logging.getLogger(__name__)

MAX_REMEMBERED_CANCELS = 4096


class ControlMixin:
    """Handlers for the worker's control subject and adapter events (mixed into ``Worker``)."""

    async def _on_control(
        self: Worker, msg: PrefillAssign | CancelRequest | PrefetchAdapter
    ) -> None:
        if isinstance(msg, PrefillAssign):
            # Not awaited: paging one request's adapter must not hold up the next message.
            self.spawn(self._on_assign(msg))
        elif isinstance(msg, CancelRequest):
            self.submit(lambda: self._cancel(msg.request_id))
        elif isinstance(msg, PrefetchAdapter):
            self.spawn(self._prefetch(msg.adapter))

    async def _prefetch(self: Worker, name: str) -> None:
        try:
            r = await self.pager.prepare(name)
        except LoraplexError as e:
            log.info("prefetch of %s failed: %s", name, e)
            return
        self.submit(lambda: self.pager.install(r))

    async def resolve_adapter(self: Worker, req: Active) -> Resolved | None | bool:
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

    async def compile_grammar(self: Worker, req: Active, report: bool = True) -> bool:
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

    def attach_adapter(self: Worker, req: Active, r: Resolved | None) -> None:
        """Engine loop: make the adapter resident and pin it for this request."""
        if r is not None:
            self.pager.install(r)
            self.pager.pin(r.key)
            req.adapter_key = r.key

    async def _on_assign(self: Worker, msg: PrefillAssign) -> None:
        from loraplex.worker.runtime import Active

        sub = msg.request
        rid = sub.request_id
        req = Active(sub, None, decode_worker=msg.decode_worker)
        if rid in self.cancelled:
            return  # its cancel overtook it
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

    def _cancel(self: Worker, request_id: str) -> None:
        self.cancelled[request_id] = None
        while len(self.cancelled) > MAX_REMEMBERED_CANCELS:
            self.cancelled.popitem(last=False)
        self.engine.abort(request_id)
        if self.kv is not None:
            self.kv.cancel(request_id)
        self.release(request_id)

    async def _on_adapter_event(self: Worker, event: AdapterEvent) -> None:
        if event.kind in ("replaced", "deleted"):
            # at once: new requests must not resolve to it
            old = self.pager.invalidate(adapter_id(event.owner, event.name))
            if old is not None:
                self.submit(lambda: self.pager.retire(old))
