"""Talking to a live stack as two tenants, and watching its NATS bus, for the live fairness tests.

``client_for`` gives the official ``openai`` client with a tenant's API key; ``BusWatch`` is a plain
NATS subscriber that records worker heartbeats and the scheduler's assignments to workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats
import openai

from loraplex.protocol import PrefillAssign, Subjects, WorkerHeartbeat, decode
from loraplex.tooling.launcher import Stack

KEYS = {"A": "sk-fairness-test-tenant-a-4f1c", "B": "sk-fairness-test-tenant-b-9e27"}


def client_for(stack: Stack, tenant: str) -> openai.AsyncOpenAI:
    base = stack.urls["gateway"] + "/v1"
    return openai.AsyncOpenAI(base_url=base, api_key=KEYS[tenant], max_retries=0, timeout=120)


async def base_model(stack: Stack) -> str:
    async with client_for(stack, "A") as client:
        return (await client.models.list()).data[0].id


@dataclass
class BusWatch:
    """A plain NATS subscriber: heartbeats and the scheduler's assignments to workers."""

    nc: nats.aio.client.Client
    heartbeats: dict[str, WorkerHeartbeat] = field(default_factory=dict)
    assigned: list[tuple[str, PrefillAssign]] = field(default_factory=list)  # (worker, message)

    async def _on_heartbeat(self, msg) -> None:  # type: ignore[no-untyped-def]
        hb = decode(msg.data, WorkerHeartbeat)
        self.heartbeats[hb.worker_id] = hb

    async def _on_worker(self, msg) -> None:  # type: ignore[no-untyped-def]
        m = decode(msg.data)
        if isinstance(m, PrefillAssign):
            self.assigned.append((msg.subject.rsplit(".", 1)[1], m))

    async def placed(self, index: int, adapter: str) -> str:
        """The worker that the first assignment for ``adapter`` (a bare name) from the
        ``index``-th on went to: another request's late assignment is not mistaken for it."""

        def found() -> str | None:
            for worker, m in self.assigned[index:]:
                if (m.request.adapter or "").rpartition("/")[2] == adapter:
                    return worker
            return None

        await self.wait_for(
            lambda: found() is not None, f"an assignment for {adapter} from #{index}"
        )
        return found()  # type: ignore[return-value]

    async def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; heartbeats: {self.heartbeats}")
            await asyncio.sleep(0.05)

    async def wait_idle(self, workers: int) -> None:
        """Every worker reports nothing running or waiting, in two heartbeats in a row."""
        for _ in range(2):
            seen = {w: hb.ts for w, hb in self.heartbeats.items()}
            await self.wait_for(
                lambda seen=seen: (
                    len(self.heartbeats) >= workers
                    and all(hb.ts > seen.get(w, 0) for w, hb in self.heartbeats.items())
                    and all(hb.running == 0 and hb.waiting == 0 for hb in self.heartbeats.values())
                ),
                "idle workers",
            )


@contextlib.asynccontextmanager
async def watch_bus(nats_url: str) -> AsyncIterator[BusWatch]:
    nc = await nats.connect(nats_url)
    bus = BusWatch(nc)
    await nc.subscribe(Subjects.HEARTBEAT, cb=bus._on_heartbeat)
    await nc.subscribe(Subjects.worker("*"), cb=bus._on_worker)
    await nc.flush()
    try:
        yield bus
    finally:
        await nc.close()
