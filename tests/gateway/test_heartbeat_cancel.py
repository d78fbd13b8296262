"""The gateway's heartbeat ends when cancelled, even when the bus swallows the cancel (redis-py
and client libraries were seen doing so under load: the loop then beat on forever and the
gateway's shutdown waited on it)."""

from __future__ import annotations

import asyncio

from loraplex.gateway.heartbeat import beat
from loraplex.protocol import GatewayHeartbeat


class SwallowingBus:
    """A bus whose first publish goes at once and whose later ones hang until cancelled; a
    cancelled publish returns as if nothing happened."""

    def __init__(self) -> None:
        self.sent: list[GatewayHeartbeat] = []
        self.in_flight = asyncio.Event()
        self.swallowed = 0

    async def publish(self, subject: str, msg: GatewayHeartbeat) -> None:
        if not self.sent:
            self.sent.append(msg)
            return
        self.in_flight.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:  # only the first one: a failing test must still end
                raise
            self.swallowed += 1


async def test_the_heartbeat_stops_when_its_bus_swallows_the_cancel() -> None:
    bus = SwallowingBus()
    task = asyncio.create_task(beat(bus, "gw-1", interval_s=0.01))  # type: ignore[arg-type]
    await asyncio.wait_for(bus.in_flight.wait(), timeout=5)
    task.cancel()  # while the second beat is being published
    done, _ = await asyncio.wait({task}, timeout=3)
    if not done:
        task.cancel()
    assert task in done, "the heartbeat ran on after its cancel was swallowed"
    assert bus.swallowed == 1
    assert [hb.gateway_id for hb in bus.sent] == ["gw-1"]
