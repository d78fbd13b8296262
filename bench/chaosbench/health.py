"""After the soak: wait until the stack is whole again (``quiesce``) and read the gauges that must
then be 0 (``leaks``): each worker's ``loraplex_worker_requests_running`` and each scheduler's
``loraplex_scheduler_inflight_requests`` and ``loraplex_scheduler_queued_requests``, from the
status listeners ``loraplex up`` gave them (``Stack.status``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
from failoverbench.stack import metric

from loraplex.protocol import Subjects, WorkerHeartbeat, decode
from loraplex.tooling.stack import Stack
from loraplex.tooling.supervisor import http_ready

WORKER_GAUGES = ("loraplex_worker_requests_running",)
SCHEDULER_GAUGES = ("loraplex_scheduler_inflight_requests", "loraplex_scheduler_queued_requests")


@dataclass
class Heartbeats:
    """When each worker's last heartbeat arrived (monotonic), from a plain NATS subscriber."""

    last: dict[str, float] = field(default_factory=dict)

    @classmethod
    @asynccontextmanager
    async def watch(cls, urls: list[str]) -> AsyncIterator[Heartbeats]:
        beats = cls()

        async def on_heartbeat(msg) -> None:  # type: ignore[no-untyped-def]
            try:
                beats.last[decode(msg.data, WorkerHeartbeat).worker_id] = time.monotonic()
            except Exception:  # not ours to judge; the scheduler drops such messages too
                return

        async def quiet(e: Exception) -> None:  # a killed node: the client reconnects elsewhere
            return

        nc = await nats.connect(
            servers=urls, name="chaos-bench", max_reconnect_attempts=-1, error_cb=quiet
        )
        try:
            await nc.subscribe(Subjects.HEARTBEAT, cb=on_heartbeat)
            yield beats
        finally:
            await nc.close()


def _workers(stack: Stack) -> list[str]:
    return [n for n in stack.status if not n.startswith("scheduler")]


def not_whole(stack: Stack, beats: Heartbeats, leader: Callable[[], str | None]) -> list[str]:
    """What still keeps the stack from being whole; empty once it is."""
    missing = []
    for svc in stack.services:
        if svc.proc is None or svc.proc.poll() is not None:
            missing.append(f"{svc.name} down")
        elif svc.name in _workers(stack) and beats.last.get(svc.name, 0.0) <= svc.started_at:
            missing.append(f"no heartbeat from {svc.name} since its start")
    lead = leader()
    if lead is None:
        missing.append("no scheduler holds the lease")
    else:
        pools = metric(stack.status[lead], "loraplex_scheduler_pool_workers")
        if pools is None or pools < len(_workers(stack)):
            missing.append(f"the leader ({lead}) sees {pools} workers")
    if not http_ready(stack.urls["gateway"] + "/ready", timeout_s=2.0):
        missing.append("the gateway is not ready")
    return missing


async def quiesce(
    stack: Stack,
    beats: Heartbeats,
    leader: Callable[[], str | None],
    timeout: float,
    settle_s: float = 2.0,
) -> list[str]:
    """Wait until every service runs again (the supervisor restarts them, with its backoff) and
    every worker heart-beats since its start, and that holds for ``settle_s`` (longer than the
    leader's lease, 1.5 s: a lease that named a killed leader has expired or been taken over);
    returns what was still missing at ``timeout``."""
    deadline = time.monotonic() + timeout
    whole_since: float | None = None
    while True:
        missing = await asyncio.to_thread(not_whole, stack, beats, leader)
        now = time.monotonic()
        whole_since = (whole_since or now) if not missing else None
        if (whole_since is not None and now - whole_since >= settle_s) or now > deadline:
            return missing
        await asyncio.sleep(0.5)


def read_gauges(stack: Stack) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, url in stack.status.items():
        gauges = SCHEDULER_GAUGES if name.startswith("scheduler") else WORKER_GAUGES
        for g in gauges:
            out[f"{name} {g}"] = metric(url, g)
    return out


async def leaks(stack: Stack, settle_s: float = 20.0) -> dict[str, float | None]:
    """The gauges, read until all are 0 (a finished request may take a heartbeat or two to be
    released) or ``settle_s`` passes; the non-zero or unreadable ones are leaks."""
    deadline = time.monotonic() + settle_s
    while True:
        values = await asyncio.to_thread(read_gauges, stack)
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        await asyncio.sleep(1.0)
