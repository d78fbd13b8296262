"""The gateway heart-beats while it runs (``GatewayHeartbeat`` about every second on
``Subjects.GATEWAYS``, naming its stream's gateway id), and stops when it stops, which is how the
scheduler learns that its requests lost their clients.  Real uvicorn and nats-server."""

from __future__ import annotations

import asyncio
import uuid

import nats

from loraplex.protocol import GatewayHeartbeat, Subjects, decode
from tests.gateway.conftest import GatewayFactory


async def test_the_gateway_heart_beats_while_it_runs(
    gateway_factory: GatewayFactory, nats_url: str
) -> None:
    gateway_id = f"gw-{uuid.uuid4().hex[:8]}"
    beats: list[GatewayHeartbeat] = []
    nc = await nats.connect(nats_url)

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        hb = decode(msg.data, GatewayHeartbeat)
        if hb.gateway_id == gateway_id:
            beats.append(hb)

    await nc.subscribe(Subjects.GATEWAYS, cb=on_beat)
    await nc.flush()
    try:
        async with gateway_factory(gateway_id=gateway_id):
            await asyncio.sleep(2.5)
            assert 2 <= len(beats) <= 4, beats
        stopped = len(beats)
        await asyncio.sleep(1.5)
        assert len(beats) == stopped  # a stopped gateway is silent
    finally:
        await nc.close()
