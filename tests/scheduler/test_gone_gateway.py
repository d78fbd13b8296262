"""A gateway that stops heart-beating is gone with its clients: the scheduler cancels its requests
(the placed one on its worker, the queued one in the queue) after ``--gateway-timeout``, and
leaves alone the requests of a live gateway and of one never heard.  Real nats-server, real
scheduler, a fake worker."""

from __future__ import annotations

import asyncio
import time

from loraplex.bus import Bus, RawMessage
from loraplex.protocol import (
    CancelRequest,
    GatewayHeartbeat,
    PrefillAssign,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from tests.scheduler.waiting import until


async def _beat_worker(bus: Bus, slots: int) -> None:
    while True:
        hb = WorkerHeartbeat("w-a", "both", 100, 100, 16, 0, 0, slots, ts=time.time())
        await bus.publish(Subjects.HEARTBEAT, hb)
        await asyncio.sleep(0.1)


async def _beat_gateway(bus: Bus, gateway_id: str) -> None:
    while True:
        await bus.publish(Subjects.GATEWAYS, GatewayHeartbeat(gateway_id, time.time()))
        await asyncio.sleep(0.1)


def test_the_requests_of_a_gateway_gone_silent_are_cancelled(nats_url):
    async def run() -> None:
        settings = SchedulerSettings(nats_url, gateway_timeout_s=0.6)
        service = SchedulerService(settings, {})
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        assigned: list[str] = []
        cancelled: list[str] = []

        async def on_control(raw: RawMessage) -> None:
            msg = decode(raw.data, (PrefillAssign, CancelRequest))
            if isinstance(msg, PrefillAssign):
                assigned.append(msg.request.request_id)
            else:
                cancelled.append(msg.request_id)

        await bus.subscribe_raw(Subjects.worker("w-a"), on_control)
        beats = [
            asyncio.create_task(_beat_worker(bus, slots=3)),
            asyncio.create_task(_beat_gateway(bus, "gw-dies")),
            asyncio.create_task(_beat_gateway(bus, "gw-lives")),
        ]
        await until(lambda: service.registry.can_serve())
        await until(lambda: {"gw-dies", "gw-lives"} <= set(service.gateways.liveness.last_heard))

        async def submit(rid: str, gateway: str) -> None:
            sub = SubmitRequest(rid, "t", gateway, [1, 2, 3], SamplingParams(max_tokens=4))
            raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
            assert decode(raw.data, SubmitReply).accepted

        # 3 slots: three placed, the fourth queued.
        for rid, gateway in [("dies-1", "gw-dies"), ("lives-1", "gw-lives"),
                             ("quiet-1", "gw-never-heard"), ("dies-2", "gw-dies")]:  # fmt: skip
            await submit(rid, gateway)
        await until(lambda: len(assigned) == 3)
        assert "dies-2" in service.submits
        await asyncio.sleep(1.0)  # every gateway that beats is alive: nothing cancelled
        assert cancelled == [] and len(service.inflight) == 3

        beats[1].cancel()  # gw-dies is gone
        await until(lambda: "dies-1" in cancelled, timeout=5.0)
        await until(lambda: "dies-2" not in service.submits)
        assert set(service.inflight) == {"lives-1", "quiet-1"}
        assert cancelled == ["dies-1"] and service.gateways.cancelled == 2
        await asyncio.sleep(0.3)  # the freed slot goes to nobody: dies-2 was dropped
        assert sorted(assigned) == ["dies-1", "lives-1", "quiet-1"]
        for t in beats:
            t.cancel()
        await bus.close()
        await service.stop()

    asyncio.run(run())
