"""A plain NATS subscriber on a live stack: the tokens workers stream to gateways (``TokenDelta``,
per request), the cancels the scheduler forwards to workers, and the workers' heartbeats.  It sees
what the workers produce, whatever the client received, so it can count tokens generated after a
client left or after its worker was told to stop, or tell when a restarted worker is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats

from loraplex.protocol import CancelRequest, Subjects, TokenDelta, WorkerHeartbeat, decode


@dataclass
class BusWatch:
    tokens: dict[str, int] = field(default_factory=dict)  # request id -> completion tokens so far
    finished: dict[str, str] = field(default_factory=dict)  # request id -> finish reason
    asked_to_cancel: set[str] = field(default_factory=set)  # cancels gateways sent the scheduler
    # request id -> its tokens when the first cancel for it reached a worker's subject
    tokens_at_cancel: dict[str, int] = field(default_factory=dict)
    heartbeats: dict[str, tuple[float, WorkerHeartbeat]] = field(default_factory=dict)
    last_delta_at: float = 0.0  # monotonic

    @classmethod
    @asynccontextmanager
    async def connect(cls, nats_url: str) -> AsyncIterator[BusWatch]:
        watch = cls()
        nc = await nats.connect(nats_url, name="hostile-bus-watch")
        try:
            await nc.subscribe(Subjects.stream("*"), cb=watch._on_stream)
            await nc.subscribe(Subjects.HEARTBEAT, cb=watch._on_heartbeat)
            await nc.subscribe(Subjects.worker("*"), cb=watch._on_worker)
            await nc.subscribe(Subjects.CANCEL, cb=watch._on_cancel)
            await nc.flush()
            yield watch
        finally:
            await nc.close()

    async def _on_stream(self, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            m = decode(msg.data)
        except Exception:  # not ours to judge here; the codec logs and drops such messages too
            return
        if isinstance(m, TokenDelta):
            self.tokens[m.request_id] = max(self.tokens.get(m.request_id, 0), m.completion_tokens)
            if m.finish_reason:
                self.finished[m.request_id] = m.finish_reason
            self.last_delta_at = time.monotonic()

    async def _on_worker(self, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            m = decode(msg.data)
        except Exception:
            return
        if isinstance(m, CancelRequest) and m.request_id not in self.tokens_at_cancel:
            self.tokens_at_cancel[m.request_id] = self.tokens.get(m.request_id, 0)

    async def _on_cancel(self, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            self.asked_to_cancel.add(decode(msg.data, CancelRequest).request_id)
        except Exception:
            return

    async def _on_heartbeat(self, msg) -> None:  # type: ignore[no-untyped-def]
        try:
            hb = decode(msg.data, WorkerHeartbeat)
        except Exception:
            return
        self.heartbeats[hb.worker_id] = (time.monotonic(), hb)

    async def wait_for(
        self,
        cond: Callable[[], bool],
        what: str,
        timeout: float = 30.0,
        details: Callable[[], str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                more = f"; {details()}" if details else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}{more}")
            await asyncio.sleep(0.05)

    async def quiet(self, for_s: float = 1.0, timeout: float = 30.0) -> None:
        """Until no token has been streamed for ``for_s`` seconds."""
        await self.wait_for(
            lambda: time.monotonic() - self.last_delta_at >= for_s,
            "the token streams to stop",
            timeout,
        )

    def idle_since(self, t: float) -> bool:
        """Every worker heard from after ``t`` reports nothing running or waiting."""
        seen = [hb for at, hb in self.heartbeats.values() if at > t]
        return (
            bool(seen)
            and len(seen) == len(self.heartbeats)
            and all(hb.running == 0 and hb.waiting == 0 for hb in seen)
        )

    def heard_from_since(self, worker_id: str, t: float) -> bool:
        got = self.heartbeats.get(worker_id)
        return got is not None and got[0] > t
