"""A gateway stand-in: submit requests to a worker over NATS and collect their streams."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from loraplex.bus import Bus
from loraplex.protocol import (
    CancelRequest,
    PrefillAssign,
    RequestError,
    Subjects,
    SubmitRequest,
    TokenDelta,
)
from loraplex.sampling_params import SamplingParams
from loraplex.terminal import serve_stream

from .config import OWNER


@dataclass
class Client:
    """What a gateway does for these requests: submit over NATS, collect the stream."""

    bus: Bus
    id: str = field(default_factory=lambda: f"bench-gw-{uuid.uuid4().hex[:6]}")
    done: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, RequestError] = field(default_factory=dict)

    async def start(self) -> None:
        await serve_stream(self.bus, self.id, self._on_msg)
        # nats-py writes flush()'s PING ahead of a SUB still queued: a second PING follows the SUB
        await self.bus.flush()
        await self.bus.flush()

    async def _on_msg(self, msg: TokenDelta | RequestError) -> None:
        if isinstance(msg, RequestError):
            self.errors[msg.request_id] = msg
            self.done[msg.request_id].set()
            return
        self.tokens[msg.request_id] += len(msg.token_ids)
        if msg.finish_reason is not None:
            self.done[msg.request_id].set()

    async def run(self, worker_id: str, prompt: list[int], adapter: str, max_tokens: int) -> str:
        rid = f"b-{uuid.uuid4().hex[:12]}"
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        sub = SubmitRequest(rid, OWNER, self.id, prompt, sampling, adapter, arrival_ts=time.time())
        done = self.done[rid]
        await self.bus.publish(Subjects.worker(worker_id), PrefillAssign(sub))
        try:
            await asyncio.wait_for(done.wait(), 120.0)
        except asyncio.TimeoutError:
            await self.bus.publish(Subjects.worker(worker_id), CancelRequest(rid))
            self.errors[rid] = RequestError(rid, 504, "no answer within 120 s")
        return rid
