"""Prefill side of the K/V hand-over: reserve on the decode worker, then stream the chunks."""

from __future__ import annotations

import asyncio
import logging
import time

from loraplex.bus import Bus, BusTimeoutError, NoRespondersError
from loraplex.engine.outputs import KVHandoff
from loraplex.protocol import KVBegin, KVChunk, KVReply, ProtocolError, Subjects
from loraplex.worker.active import Active, ActiveTable
from loraplex.worker.inbox import Inbox
from loraplex.worker.kv_transfer import (
    ALREADY_RUNS,
    chunk_size_for,
    dtype_name,
    num_chunks,
    split,
    tensor_to_bytes,
)
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.publish import Publisher

log = logging.getLogger(__name__)

BEGIN_ATTEMPT_S = 2.0  # a decode worker answers a KVBegin in milliseconds (its adapter prefetched)
# Hand-overs begun again after a connection drop; past the last, the chunks count as sent (if
# they were lost, the decode worker's transfer expires and the request is placed again).
SHIP_ATTEMPTS = 3


class KVSender:
    """Ships prompt K/V to decode workers over the bus (``Subjects.kv``); reports the hand-over
    or its failure through the publisher and releases the request from the table afterwards."""

    def __init__(
        self,
        bus: Bus,
        worker_id: str,
        timeout_s: float,
        publisher: Publisher,
        inbox: Inbox,
        table: ActiveTable,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._bus = bus
        self._id = worker_id
        self._timeout_s = timeout_s
        self._publisher = publisher
        self._inbox = inbox
        self._table = table
        self._metrics = metrics

    async def ship(self, req: Active, handoff: KVHandoff) -> None:
        """Send one request's prompt K/V to its decode worker; failures go back to the scheduler."""
        bus = self._bus
        sub = req.submit
        req.shipping = True  # from here the decode worker is fixed (``control.placed_again``)
        subject = Subjects.kv(req.decode_worker)
        t0, sent = time.perf_counter(), False
        try:
            payload = handoff.payload
            size = chunk_size_for(bus.max_payload)
            nbytes = payload.numel() * payload.element_size()
            begin = KVBegin(
                request=sub,
                first_token=handoff.first_token,
                num_tokens=handoff.num_tokens,
                num_chunks=num_chunks(nbytes, size),
                dtype=dtype_name(payload.dtype),
                shape=list(payload.shape),
                prefill_worker=self._id,
                chunk_size=size,
                accepts_prefix=True,
                first_logprobs=handoff.first_logprobs,
                prompt_logprobs=handoff.prompt_logprobs,
                generated=list(req.resumed),
                cached_tokens=req.cached_tokens,
            )
            data = b""
            for attempt in range(1, SHIP_ATTEMPTS + 1):
                reply = await self._begin(subject, begin)
                if not reply.accepted and attempt > 1 and reply.reason == ALREADY_RUNS:
                    break  # the last try's chunks did arrive: the request decodes there
                if not reply.accepted:
                    await self._fail(req, f"decode worker refused the K/V: {reply.reason}")
                    return
                if not 0 <= reply.cached_blocks < payload.shape[2]:
                    raise ProtocolError(f"decode worker claims {reply.cached_blocks} cached blocks")
                # Blocks the decode worker already caches (a shared prompt prefix) stay here.
                kept = payload[:, :, reply.cached_blocks :]
                data = await asyncio.to_thread(tensor_to_bytes, kept)
                for i, chunk in enumerate(split(data, size)):
                    await bus.publish(subject, KVChunk(sub.request_id, i, chunk))
                if await bus.flush_delivered():
                    break
                # The connection dropped (or the server never confirmed): chunks may be lost
                # with it.  Begin again: the decode worker replaces the partial transfer, or
                # answers that the request already runs there.
                log.warning("K/V hand-over of %s unconfirmed (try %d); beginning again",
                            sub.request_id, attempt)  # fmt: skip
            sent = True
            if self._metrics is not None:
                self._metrics.handover_sent(len(data), time.perf_counter() - t0)
            req.generated = len(req.resumed) + 1
            await self._publisher.progress(req, "handoff", new_tokens=0)
        except (BusTimeoutError, NoRespondersError, ProtocolError) as e:
            await self._fail(
                req, f"K/V hand-over to decode worker {req.decode_worker} failed: {e!r}"
            )
        except Exception as e:
            log.exception("K/V hand-over of %s failed", sub.request_id)
            await self._publisher.fail(req, 503, f"K/V hand-over failed: {e!r}", retryable=True)
        finally:
            if not sent and self._metrics is not None:
                self._metrics.handover_failed()
            self._inbox.submit(lambda: self._table.release(sub.request_id))

    async def _fail(self, req: Active, why: str) -> None:
        """A retryable failure, blamed on the decode worker (the scheduler avoids it next)."""
        await self._publisher.fail(req, 503, why, retryable=True, suspect=req.decode_worker)

    async def _begin(self, subject: str, begin: KVBegin) -> KVReply:
        """``KVBegin`` until the decode worker answers, a new try every ``BEGIN_ATTEMPT_S`` and
        ``timeout_s`` in all.  Core NATS loses a begin, or its reply, that crosses a node as it
        dies: waiting out the whole timeout stalled such a request for 10 s.  The decode worker
        takes a repeat like a first begin (a pending transfer of the same request is replaced)."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._bus.request(
                    subject, begin, KVReply, max(0.001, min(BEGIN_ATTEMPT_S, left))
                )
            except BusTimeoutError:
                if deadline - time.monotonic() <= 0:
                    raise BusTimeoutError(
                        f"no reply on {subject} within {self._timeout_s:g}s"
                    ) from None
