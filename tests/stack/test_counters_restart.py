"""Fairness counters survive a scheduler restart.

A fake colocated worker serves requests on a real NATS server; the scheduler process charges the
tenants and saves its counters in a real Redis, is stopped with SIGTERM and started again on the
same Redis: the fairness counters it charged are restored, and keep growing from there.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
import redis

from loraplex.protocol import (
    PrefillAssign,
    RequestProgress,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.counters import COUNTERS_SUFFIX
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings


class FakeWorker:
    """A colocated worker on NATS that serves by fiat: heartbeats, assignments, usage reports."""

    def __init__(self, nc: nats.aio.client.Client, worker_id: str, max_num_seqs: int) -> None:
        self.nc, self.id, self.max_num_seqs = nc, worker_id, max_num_seqs
        self.assigned: asyncio.Queue[SubmitRequest] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.nc.subscribe(Subjects.worker(self.id), cb=self._on_msg)
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        while True:
            hb = WorkerHeartbeat(
                worker_id=self.id, role="both", free_blocks=256, total_blocks=256, block_size=16,
                running=0, waiting=0, max_num_seqs=self.max_num_seqs, ts=time.time(),
            )  # fmt: skip
            await self.nc.publish(Subjects.HEARTBEAT, encode(hb))
            await asyncio.sleep(0.2)

    async def _on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        m = decode(msg.data)
        if isinstance(m, PrefillAssign):
            await self.assigned.put(m.request)

    async def serve(self, req: SubmitRequest, tokens: int) -> None:
        """Report ``tokens`` output tokens (in two usage reports) and the finish."""
        first = tokens // 2
        common = {"request_id": req.request_id, "tenant": req.tenant, "worker_id": self.id}
        plen = len(req.prompt_token_ids)
        for event, new, total in [
            ("tokens", first, first),
            ("tokens", tokens - first, tokens),
            ("finished", 0, tokens),
        ]:
            p = RequestProgress(
                event=event, new_tokens=new, prompt_tokens=plen, completion_tokens=total, **common
            )
            await self.nc.publish(Subjects.USAGE, encode(p))
        await self.nc.flush()

    async def next_assigned(self) -> SubmitRequest:
        return await asyncio.wait_for(self.assigned.get(), timeout=10)


async def submit(nc: nats.aio.client.Client, rid: str, tenant: str, prompt_len: int) -> None:
    """Submit as a gateway would; retried while the scheduler has not yet heard a heartbeat (503)."""
    sub = SubmitRequest(
        rid, tenant, "gw-test", list(range(prompt_len)), SamplingParams(max_tokens=64)
    )
    deadline = time.monotonic() + 10
    while True:
        reply = decode(
            (await nc.request(Subjects.SUBMIT, encode(sub), timeout=5)).data, SubmitReply
        )
        if reply.accepted or reply.code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert reply.accepted, reply


def saved_counters(redis_url: str) -> dict[str, float]:
    r = redis.Redis.from_url(redis_url)
    try:
        raw = r.get("loraplex" + COUNTERS_SUFFIX)
    finally:
        r.close()
    return json.loads(raw)["counters"] if raw else {}


async def wait_saved(redis_url: str, cond: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    deadline = time.monotonic() + 15
    while not cond(counters := saved_counters(redis_url)):
        assert time.monotonic() < deadline, f"counters in Redis: {counters}"
        await asyncio.sleep(0.1)
    return counters


async def start_scheduler_process(nats_url: str, redis_url: str, log: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "loraplex.scheduler",
        "--nats-url",
        nats_url,
        "--redis-url",
        redis_url,
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*argv, "--fairness", "vtc"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"scheduler ready" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.1)
    return proc


async def charge_service(nc: nats.aio.client.Client, worker: FakeWorker) -> None:
    """Tenant A: one request of 100 prompt + 20 output tokens; then B: 4 prompt + 2 output."""
    for rid, tenant, prompt_len, out in [("r-a", "A", 100, 20), ("r-b", "B", 4, 2)]:
        await submit(nc, rid, tenant, prompt_len)
        req = await worker.next_assigned()
        assert req.request_id == rid
        await worker.serve(req, out)


async def test_counters_survive_scheduler_restart(nats_url, redis_url, tmp_path):
    with redis.Redis.from_url(redis_url) as r:
        r.delete("loraplex" + COUNTERS_SUFFIX)
    nc = await nats.connect(nats_url)
    worker = FakeWorker(nc, "fake-restart-0", max_num_seqs=1)
    await worker.start()
    proc = await start_scheduler_process(nats_url, redis_url, tmp_path / "scheduler.log")
    try:
        await charge_service(nc, worker)
        # A: 100 + 2*20 = 140.  B arrived when no one was queued: lifted to the counter of the tenant
        # that left the queue last (A, 140), then charged 4 + 2*2.
        expected = {"A": 140.0, "B": 148.0}
        await wait_saved(redis_url, lambda c: c == expected)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "scheduler.log").read_text()
    assert saved_counters(redis_url) == expected

    settings = SchedulerSettings(nats_url=nats_url, redis_url=redis_url, fairness="vtc")
    service = SchedulerService(settings, weights={})
    await service.start()
    try:
        assert service.policy.counters() == expected
        # ... and they keep growing from there: B's next request (lift is a no-op: B left last).
        await asyncio.sleep(0.5)  # the fake worker's heartbeat reached the new scheduler
        await submit(nc, "r-b2", "B", 6)
        await worker.serve(await worker.next_assigned(), 3)
        await wait_saved(redis_url, lambda c: c.get("B") == 148.0 + 6 + 2 * 3)
    finally:
        await service.stop()
        await worker.stop()
        await nc.close()
