"""Prefill side of the K/V hand-over: reserve on the decode worker, then stream the chunks."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import nats.errors

from loraplex.engine.outputs import KVHandoff
from loraplex.protocol import KVBegin, KVChunk, KVReply, ProtocolError, Subjects, decode, encode
from loraplex.worker.kv_transfer import (
    chunk_size_for,
    dtype_name,
    num_chunks,
    split,
    tensor_to_bytes,
)
from loraplex.worker.logprobs_wire import list_to_wire, to_wire

if TYPE_CHECKING:
    from loraplex.worker.runtime import Active, Worker

log = logging.getLogger(__name__)


async def ship_kv(worker: Worker, req: Active, handoff: KVHandoff) -> None:
    """Send one request's prompt K/V to its decode worker; failures go back to the scheduler."""
    bus = worker.bus
    assert bus is not None
    sub = req.submit
    subject = Subjects.kv(req.decode_worker)
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
            prefill_worker=worker.id,
            chunk_size=size,
            accepts_prefix=True,
            first_logprobs=to_wire(handoff.first_logprobs) if handoff.first_logprobs else None,
            prompt_logprobs=list_to_wire(handoff.prompt_logprobs),
        )
        raw = await bus.nc.request(subject, encode(begin), timeout=worker.s.kv_timeout_s)
        reply = decode(raw.data, KVReply)
        if not reply.accepted:
            await worker.fail(
                req,
                503,
                f"decode worker refused the K/V: {reply.reason}",
                retryable=True,
                suspect=req.decode_worker,
            )
            return
        if not 0 <= reply.cached_blocks < payload.shape[2]:
            raise ProtocolError(f"decode worker claims {reply.cached_blocks} cached blocks")
        # Blocks the decode worker already caches (a shared prompt prefix) stay here.
        data = await asyncio.to_thread(tensor_to_bytes, payload[:, :, reply.cached_blocks :])
        chunks = split(data, size)
        for i, chunk in enumerate(chunks):
            await bus.publish(subject, KVChunk(sub.request_id, i, chunk))
        await bus.flush()
        req.generated = 1
        await worker.progress(req, "handoff", new_tokens=0)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ProtocolError) as e:
        await worker.fail(
            req,
            503,
            f"K/V hand-over to decode worker {req.decode_worker} failed: {e!r}",
            retryable=True,
            suspect=req.decode_worker,
        )
    except Exception as e:
        log.exception("K/V hand-over of %s failed", sub.request_id)
        await worker.fail(req, 503, f"K/V hand-over failed: {e!r}", retryable=True)
    finally:
        worker.submit(lambda: worker.release(sub.request_id))
