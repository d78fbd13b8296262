"""The gateway's heartbeat: ``GatewayHeartbeat`` every second on ``Subjects.GATEWAYS``, so the
scheduler knows it lives.  A gateway that dies takes its clients' connections with it; the
scheduler cancels its requests once it has been silent for ``--gateway-timeout``
(``services/scheduler/gateways.py``), so they stop holding batch slots and KV blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from loraplex.bus import TypedBus
from loraplex.protocol import GatewayHeartbeat, Subjects
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)

INTERVAL_S = 1.0  # well inside the scheduler's --gateway-timeout (10 s)


async def beat(bus: TypedBus, gateway_id: str, interval_s: float = INTERVAL_S) -> None:
    """Publish the heartbeat every ``interval_s`` until cancelled."""
    while not cancel_requested():  # a cancel a client library swallowed ends it too
        try:
            await bus.publish(Subjects.GATEWAYS, GatewayHeartbeat(gateway_id, time.time()))
        except Exception as e:  # NATS reconnecting: the next beat goes
            log.debug("heartbeat not published: %s", e)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def beating(bus: TypedBus, gateway_id: str) -> AsyncIterator[None]:
    """Heart-beat while the context is open (the gateway's lifespan)."""
    task = asyncio.create_task(beat(bus, gateway_id))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
