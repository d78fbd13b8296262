"""The gateway's ``/ready``: 200 only while the scheduler's broadcast (``SchedulerStats.pools``)
shows a worker set that can serve a request, a colocated worker or a prefill and a decode worker.
Real uvicorn and NATS; the broadcasts are published by the test as a scheduler would."""

from __future__ import annotations

import asyncio

import httpx
import nats

from loraplex.protocol import SchedulerStats, Subjects, encode
from tests.gateway.conftest import GatewayFactory


async def _ready_until(http: httpx.AsyncClient, status: int) -> httpx.Response:
    for _ in range(200):
        r = await http.get("/ready")
        if r.status_code == status:
            return r
        await asyncio.sleep(0.025)
    raise AssertionError(f"/ready never answered {status}: {r.status_code} {r.text}")


async def test_ready_follows_the_schedulers_pools(
    gateway_factory: GatewayFactory, nats_url: str
) -> None:
    async with (
        gateway_factory() as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        nc = await nats.connect(nats_url)
        try:
            r = await http.get("/ready")  # no scheduler has spoken on this NATS yet
            assert r.status_code == 503 and r.json()["error"]["code"] == "scheduler_unavailable"
            assert r.json()["nats"] is True
            assert (await http.get("/health")).status_code == 200  # alive all the same

            async def say(pools: dict[str, int]) -> None:
                await nc.publish(Subjects.STATS, encode(SchedulerStats({}, {}, {}, pools)))
                await nc.flush()

            await say({"prefill": 1, "decode": 0, "both": 0})  # no decode capacity
            r = await _ready_until(http, 503)
            for _ in range(200):
                if r.json().get("scheduler"):
                    break
                r = await http.get("/ready")
                await asyncio.sleep(0.025)
            assert r.json()["error"]["code"] == "no_capacity", r.text
            await say({"prefill": 1, "decode": 1, "both": 0})
            r = await _ready_until(http, 200)
            assert r.json()["pools"] == {"prefill": 1, "decode": 1, "both": 0}
        finally:
            await nc.close()
