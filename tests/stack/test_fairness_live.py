"""Fairness, counter persistence and adapter placement on the live stack.

* Two continuously backlogged tenants, A keeping 4x as many requests in flight as B, served through
  the real gateway/scheduler/workers with the official ``openai`` client and each tenant's API key:
  under VTC their service (``w_p * prompt + w_q * completion`` from the responses' usage) is about
  equal; under FCFS A gets several times B's.  Worker batches are small (``--max-num-seqs 2`` on
  two colocated workers), so the scheduler's queue is where requests wait.
* The scheduler process is stopped with SIGTERM and started again on the same Redis: the fairness
  counters it charged are restored.
* Requests for an adapter go to the worker that reports it resident while that worker has room.

Only token counts are asserted, never timings (the machine is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import openai
import pytest
import redis

from loraplex.launcher import Stack
from loraplex.protocol import (
    PrefillAssign,
    RequestProgress,
    SamplingSpec,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
    decode,
    encode,
)
from loraplex.scheduler.service import COUNTERS_SUFFIX, SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from tests.stack.conftest import launch

W_P, W_Q = 1.0, 2.0  # the scheduler's default cost weights
KEYS = {"A": "sk-fairness-test-tenant-a-4f1c", "B": "sk-fairness-test-tenant-b-9e27"}
IN_FLIGHT = {"A": 16, "B": 4}  # A sends 4x as many requests as B
PROMPT = list(range(100, 116))  # 16 prompt tokens for every request
MAX_TOKENS = 32
WARMUP = 8  # completions skipped before the measured window (queues filling up)
WINDOW = 48  # completions measured while both tenants are backlogged
RUN_CAP_S = 120.0  # safety net only; the window is defined by completion counts
STACK_FLAGS = ["--prefill-workers", "0", "--decode-workers", "2", "--max-num-seqs", "2"]


# ---- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    tenants = [{"name": name, "api_key": key, "weight": 1.0} for name, key in KEYS.items()]
    path.write_text(json.dumps({"tenants": tenants}))
    return path


@pytest.fixture(scope="module")
def fair_stack(request, tmp_path_factory, tenants_file) -> Stack:
    """One stack per ``--fairness`` policy (indirect parameter), two colocated workers."""
    policy = request.param
    flags = [*STACK_FLAGS, "--fairness", policy, "--tenants", str(tenants_file)]
    stack = launch(tmp_path_factory, f"fair-{policy}", flags)
    stack.policy = policy  # type: ignore[attr-defined]
    yield stack
    stack.stop()


def client_for(stack: Stack, tenant: str) -> openai.AsyncOpenAI:
    base = stack.urls["gateway"] + "/v1"
    return openai.AsyncOpenAI(base_url=base, api_key=KEYS[tenant], max_retries=0, timeout=120)


async def base_model(stack: Stack) -> str:
    async with client_for(stack, "A") as client:
        return (await client.models.list()).data[0].id


@dataclass(frozen=True)
class Done:
    tenant: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def service(self) -> float:
        return W_P * self.prompt_tokens + W_Q * self.completion_tokens


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

    async def placed(self, index: int) -> str:
        """The worker that the ``index``-th assignment seen (counting from 0) went to."""
        await self.wait_for(lambda: len(self.assigned) > index, f"assignment #{index}")
        return self.assigned[index][0]

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


# ---- 1. fairness between two backlogged tenants ------------------------------------------------
async def backlogged_run(stack: Stack) -> list[Done]:
    """A keeps 16 requests in flight, B keeps 4, until WARMUP + WINDOW have completed."""
    model = await base_model(stack)
    done: list[Done] = []
    enough = asyncio.Event()

    async def keep_one_in_flight(client: openai.AsyncOpenAI, tenant: str) -> None:
        while True:
            r = await client.completions.create(
                model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            assert r.usage is not None
            done.append(Done(tenant, r.usage.prompt_tokens, r.usage.completion_tokens))
            if len(done) >= WARMUP + WINDOW:
                enough.set()

    clients = {t: client_for(stack, t) for t in KEYS}
    tasks = [
        asyncio.create_task(keep_one_in_flight(clients[t], t))
        for t, n in IN_FLIGHT.items()
        for _ in range(n)
    ]
    try:
        waiter = asyncio.create_task(enough.wait())
        finished, _ = await asyncio.wait(
            [waiter, *tasks], timeout=RUN_CAP_S, return_when=asyncio.FIRST_COMPLETED
        )
        for t in finished:
            if t is not waiter:
                t.result()  # a client loop ended: raise its error
        assert enough.is_set(), f"only {len(done)} requests completed in {RUN_CAP_S} s"
    finally:
        for t in tasks:
            t.cancel()  # closing the connections cancels what is still queued or running
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients.values():
            await c.close()
    return done


def service_in_window(done: list[Done]) -> dict[str, float]:
    window = done[WARMUP : WARMUP + WINDOW]
    assert all(d.completion_tokens == MAX_TOKENS and d.prompt_tokens == len(PROMPT) for d in window)
    return {t: sum(d.service for d in window if d.tenant == t) for t in KEYS}


@pytest.mark.slow
@pytest.mark.parametrize("fair_stack", ["vtc", "fcfs"], indirect=True)
def test_backlogged_tenants_service(fair_stack):
    done = asyncio.run(backlogged_run(fair_stack))
    service = service_in_window(done)
    assert service["A"] > 0 and service["B"] > 0, service
    ratio = service["A"] / service["B"]
    print(f"{fair_stack.policy}: service in window {service}, A/B = {ratio:.2f}")
    if fair_stack.policy == "vtc":
        assert 1 / 1.5 <= ratio <= 1.5, f"VTC: backlogged tenants' service differs: {service}"
    else:
        assert ratio > 2.0, f"FCFS: A (4x the requests) should get > 2x B's service: {service}"


# ---- 2. adapter placement prefers the worker holding the adapter ------------------------------
async def completion(client: openai.AsyncOpenAI, model: str, max_tokens: int = 4) -> None:
    await client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )


async def long_stream(client: openai.AsyncOpenAI, model: str) -> openai.AsyncStream:
    """A streaming request that is running (its first token arrived) when this returns."""
    stream = await client.completions.create(
        model=model, prompt=PROMPT, max_tokens=1000, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    await stream.__anext__()
    return stream


async def placement_run(stack: Stack) -> None:
    names = [a.name for a in stack.adapters]  # type: ignore[attr-defined]
    async with watch_bus(stack.urls["nats"]) as bus, client_for(stack, "A") as client:
        await bus.wait_idle(workers=2)
        resident = {a for hb in bus.heartbeats.values() for a in hb.adapters}
        x, y = [n for n in names if n not in resident][:2]

        async def where(request: Awaitable[object]) -> tuple[str, object]:
            """Send a request; return the worker the scheduler placed it on (and its result)."""
            index = len(bus.assigned)
            result = await request
            return await bus.placed(index), result

        # X lands on some worker W_x; Y, sent while X runs there, goes to the emptier worker.
        w_x, x_stream = await where(long_stream(client, x))
        w_y, _ = await where(completion(client, y))
        assert w_x != w_y, "Y should go to the idle worker while X runs"
        await x_stream.close()
        await bus.wait_for(
            lambda: x in bus.heartbeats[w_x].adapters and y in bus.heartbeats[w_y].adapters,
            "heartbeats reporting the adapters resident",
        )
        await bus.wait_idle(workers=2)

        # Both idle: each adapter goes back to the worker that holds it.  One of the two is not the
        # worker that load and worker id alone would pick, so residency is what decided.
        for adapter, expected in [(x, w_x), (y, w_y), (y, w_y), (x, w_x)]:
            worker, _ = await where(completion(client, adapter))
            assert worker == expected, f"{adapter} went to {worker}, not to {expected} holding it"
        assert y not in bus.heartbeats[w_x].adapters, "Y was never placed on W_x"

        # W_y full (2 running Y requests): the next Y request goes to W_x rather than wait.
        running = [await where(long_stream(client, y)) for _ in range(2)]
        assert [w for w, _ in running] == [w_y, w_y]
        worker, _ = await where(completion(client, y))
        assert worker == w_x, "with W_y full, Y should go to the worker with room"
        for _, stream in running:
            await stream.close()  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("fair_stack", ["vtc"], indirect=True)
def test_adapter_placement_prefers_resident_worker(fair_stack):
    asyncio.run(placement_run(fair_stack))


# ---- 3. counters survive a scheduler restart ---------------------------------------------------
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
        rid, tenant, "gw-test", list(range(prompt_len)), SamplingSpec(max_tokens=64)
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
