"""Decode side of the K/V hand-over: reserve blocks, collect chunks, join the decode batch.

Reservations that do not complete within ``kv_timeout_s`` are freed and reported as failed, so
the scheduler can re-dispatch the request (no token has reached the client yet).
"""

from __future__ import annotations

import asyncio
import logging
import time

from loraplex.bus import Bus, RawMessage
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.resume import resumed_params
from loraplex.errors import LoraplexError
from loraplex.protocol import KVBegin, KVChunk, KVReply, ProtocolError, Subjects, decode, encode
from loraplex.timeouts import cancel_requested
from loraplex.worker.active import Active, ActiveTable
from loraplex.worker.inbox import Background, Inbox
from loraplex.worker.kv_transfer import (
    ALREADY_RUNS,
    PendingTransfer,
    bytes_to_tensor,
    num_chunks,
    payload_nbytes,
)
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.prepare import Preparation
from loraplex.worker.publish import Publisher

log = logging.getLogger(__name__)

RECONNECT_GRACE_S = 2.0  # a pending transfer's idle limit after this worker's connection dropped


def _arriving_shape(begin: KVBegin, cached: int) -> list[int]:
    """The payload that actually comes: [layers, 2, blocks, ...] less the blocks cached here."""
    shape = list(begin.shape)
    shape[2] -= cached
    return shape


class KVReceiver:
    """Owns this worker's K/V subject (``Subjects.kv``) and the transfers in progress: reserves
    blocks in the engine through the inbox, adds the request to the active table, and injects
    the payload once complete (its outputs go to the inbox's ``outputs`` for publishing)."""

    def __init__(
        self,
        bus: Bus,
        worker_id: str,
        timeout_s: float,
        engine: LLMEngine,
        table: ActiveTable,
        inbox: Inbox,
        background: Background,
        prep: Preparation,
        publisher: Publisher,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._bus = bus
        self._metrics = metrics
        self._id = worker_id
        self._timeout_s = timeout_s
        self._engine = engine
        self._table = table
        self._inbox = inbox
        self._bg = background
        self._prep = prep
        self._publisher = publisher
        self.pending: dict[str, tuple[KVBegin, PendingTransfer, int]] = {}  # + cached blocks
        self._begins: dict[str, object] = {}  # request id -> the begin being answered last
        self._watchdog: asyncio.Task | None = None

    async def start(self) -> None:
        # K/V payloads can be large: allow more pending bytes than nats-py's default before the
        # subscription counts as a slow consumer.
        await self._bus.subscribe_raw(
            Subjects.kv(self._id), self._on_msg, pending_bytes_limit=1 << 30
        )
        self._watchdog = asyncio.create_task(self._expire_loop())

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _on_msg(self, raw: RawMessage) -> None:
        try:
            msg = decode(raw.data, (KVBegin, KVChunk))
        except ProtocolError as e:
            log.warning("dropped K/V message: %s", e)
            return
        if isinstance(msg, KVBegin):
            # Answered in a task: nats-py hands this subject's messages over one at a time, and
            # a begin may wait for its adapter to page in or its constraint to compile; every
            # other request's hand-over to this worker waited behind it (red team: 503s).
            self._bg.spawn(self._answer(raw, msg))
        else:
            self._chunk(msg)  # a request's chunks come after its begin was answered

    async def _answer(self, raw: RawMessage, begin: KVBegin) -> None:
        rid, turn = begin.request.request_id, object()
        self._begins[rid] = turn  # a begin sent again while this one waits supersedes it
        try:
            reply = await self._begin(begin, turn)
        except Exception:  # a refusal, not a silent task: the sender tries elsewhere
            log.exception("K/V begin of %s failed", rid)
            reply = KVReply(rid, False, "internal error")
        finally:
            if self._begins.get(rid) is turn:
                del self._begins[rid]
        try:
            await raw.respond(encode(reply))
        except Exception as e:  # the connection dropped: the sender begins again or fails it
            log.warning("K/V reply for %s not sent: %s", rid, e)

    async def _begin(self, begin: KVBegin, turn: object) -> KVReply:
        rid = begin.request.request_id
        if self._table.draining:
            return KVReply(rid, False, "draining")
        if rid in self._table.cancelled:
            return KVReply(rid, False, "cancelled")
        req = Active(begin.request, None, "", len(begin.generated), list(begin.generated))
        req.cached_tokens = begin.cached_tokens  # the prefill worker's hits, for the gateway
        r = await self._prep.resolve_adapter(req)
        if r is False:
            return KVReply(rid, False, "adapter unavailable")
        why = await self._prep.compile_grammar(req, report=False)
        if why is not None:
            return KVReply(rid, False, f"structured output does not compile here: {why}")
        if self._begins.get(rid) is not turn:
            return KVReply(rid, False, "superseded by a later begin of the same request")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        cached, refusal = 0, "no free KV blocks"

        def reserve() -> None:
            nonlocal cached, refusal
            engine = self._engine
            if rid in self.pending:
                # The same request again: the scheduler re-dispatched it after its hand-over
                # failed half-way (chunks or the reply lost).  The new one replaces the old.
                log.info("K/V hand-over of %s begins again; dropping the partial one", rid)
                self.cancel(rid)
                self._table.release(rid)
            elif rid in self._table.active:
                refusal = ALREADY_RUNS
                done.set_result(False)
                return
            if begin.accepts_prefix:
                lora = r.key if r is not None else None  # type: ignore[union-attr]
                tokens = begin.request.prompt_token_ids + begin.generated  # K/V cover both
                got = engine.reserve_for_prompt(rid, tokens, lora, begin.request.cache_salt)
                ok, cached = got is not None, got or 0
            else:
                ok = engine.reserve_blocks(rid, begin.num_tokens)
            if ok:
                try:
                    self._prep.attach_adapter(req, r)  # type: ignore[arg-type]
                except LoraplexError:
                    self._engine.release_reservation(rid)
                    ok = False
            if ok:
                self._table.active[rid] = req
                size = payload_nbytes(begin.dtype, _arriving_shape(begin, cached))
                chunks = num_chunks(size, begin.chunk_size) if cached else begin.num_chunks
                transfer = PendingTransfer(chunks, size, self._timeout_s)
                self.pending[rid] = (begin, transfer, cached)
            done.set_result(ok)

        self._inbox.submit(reserve)
        ok = await done
        return KVReply(rid, ok, "" if ok else refusal, cached_blocks=cached)

    def _chunk(self, chunk: KVChunk) -> None:
        entry = self.pending.get(chunk.request_id)
        if entry is None:
            log.debug("K/V chunk for unknown or expired request %s", chunk.request_id)
            return
        begin, transfer, cached = entry
        try:
            complete = transfer.add(chunk.index, chunk.data, begin.chunk_size or len(chunk.data))
        except ValueError as e:
            log.warning("bad K/V chunk for %s: %s", chunk.request_id, e)
            return
        if self._metrics is not None:
            self._metrics.handover_received(len(chunk.data))
        if complete:
            del self.pending[chunk.request_id]
            self._inbox.submit(lambda: self._inject(begin, transfer, cached))

    def _inject(self, begin: KVBegin, transfer: PendingTransfer, cached: int) -> None:
        sub = begin.request
        req = self._table.active.get(sub.request_id)
        if req is None:  # cancelled meanwhile
            self._engine.release_reservation(sub.request_id)
            return
        payload = bytes_to_tensor(transfer.buffer, begin.dtype, _arriving_shape(begin, cached))
        try:
            params = sub.sampling
            if begin.generated:  # a migrated request: its earlier tokens are outputs
                vocab = self._engine.model_config.vocab_size
                params = resumed_params(params, begin.generated, vocab)
            out = self._engine.inject(
                sub.request_id,
                sub.prompt_token_ids,
                params,
                req.adapter_key,
                begin.first_token,
                payload,
                cached,
                begin.first_logprobs,
                begin.prompt_logprobs,
                begin.generated,
                sub.cache_salt,
            )
        except LoraplexError as e:
            self._engine.release_reservation(sub.request_id)
            self._table.release(sub.request_id)
            self._bg.spawn(self._publisher.fail(req, 400, str(e), retryable=False))
            return
        self._inbox.outputs.append(out)

    def cancel(self, request_id: str) -> None:
        """Engine loop only: drop a transfer in progress and its reservation."""
        self.pending.pop(request_id, None)
        self._engine.release_reservation(request_id)

    async def _expire_loop(self) -> None:
        disconnects = self._bus.disconnects
        while not cancel_requested():
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self._bus.disconnects != disconnects:
                # This connection dropped: chunks on their way through it are gone.  A sender
                # still sending refreshes the deadline; a transfer that stalled fails in seconds
                # (and is placed again), not after the whole idle timeout.
                disconnects = self._bus.disconnects
                for _, transfer, _ in self.pending.values():
                    transfer.deadline = min(transfer.deadline, now + RECONNECT_GRACE_S)
            for rid, (_, transfer, _) in list(self.pending.items()):
                if transfer.expired(now):
                    self.pending.pop(rid, None)
                    req = self._table.active.get(rid)
                    self._inbox.submit(
                        lambda rid=rid: (
                            self._engine.release_reservation(rid),
                            self._table.release(rid),
                        )
                    )
                    if req is not None:
                        await self._publisher.fail(
                            req, 503, "K/V transfer timed out", retryable=True
                        )
