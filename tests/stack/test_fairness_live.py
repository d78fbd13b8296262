"""Fairness and adapter placement on the live stack.

* Two continuously backlogged tenants, A keeping 4x as many requests in flight as B, served through
  the real gateway/scheduler/workers with the official ``openai`` client and each tenant's API key:
  under VTC their service (``w_p * prompt + w_q * completion`` from the responses' usage) is about
  equal; under FCFS A gets several times B's.  Worker batches are small (``--max-num-seqs 2`` on
  two colocated workers), so the scheduler's queue is where requests wait.
* Requests for an adapter go to the worker that reports it resident while that worker has room.

That fairness counters survive a scheduler restart is in ``test_counters_restart.py``.
Only token counts are asserted, never timings (the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from loraplex.tooling.launcher import Stack
from tests.stack.conftest import launch
from tests.stack.fairness_live_helpers import KEYS, base_model, client_for, watch_bus

W_P, W_Q = 1.0, 2.0  # the scheduler's default cost weights
# A sends 4x as many requests as B; B keeps twice the cluster's 4 batch slots in flight, so it
# stays backlogged (with 4, all of B's could run at once: B then had nothing queued while its
# client sent the next ones, and a fast scheduler rightly gave the free slots to A)
IN_FLIGHT = {"A": 32, "B": 8}
PROMPT = list(range(100, 116))  # 16 prompt tokens for every request
MAX_TOKENS = 32
WARMUP = 8  # completions skipped before the measured window (queues filling up)
WINDOW = 48  # completions measured while both tenants are backlogged
RUN_CAP_S = 120.0  # safety net only; the window is defined by completion counts
STACK_FLAGS = ["--prefill-workers", "0", "--decode-workers", "2", "--max-num-seqs", "2"]


# ---- fixtures --------------------------------------------------------------------------------
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


@pytest.fixture(scope="module")
def placement_stack(tmp_path_factory, tenants_file) -> Stack:
    """A stack of its own: the fairness run's closed connections can leave a request queued
    (the open lost-cancel bug, tests/hostile/test_disconnect.py) that is placed later, on the
    workers this test needs idle."""
    flags = [*STACK_FLAGS, "--fairness", "vtc", "--tenants", str(tenants_file)]
    stack = launch(tmp_path_factory, "placement", flags)
    yield stack
    stack.stop()


@dataclass(frozen=True)
class Done:
    tenant: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def service(self) -> float:
        return W_P * self.prompt_tokens + W_Q * self.completion_tokens


# ---- 1. fairness between two backlogged tenants ------------------------------------------------
async def backlogged_run(stack: Stack) -> list[Done]:
    """A keeps 32 requests in flight, B keeps 8, until WARMUP + WINDOW have completed."""
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


def _pool_lines(stack: Stack) -> list[str]:
    """The scheduler's view of the pool (for a failure message)."""
    url = next(u for name, u in stack.status.items() if name.startswith("scheduler"))
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return [line for line in text.splitlines() if line.startswith("loraplex_scheduler_pool")]


async def placement_run(stack: Stack) -> None:
    names = [a.name for a in stack.adapters]  # type: ignore[attr-defined]
    async with watch_bus(stack.urls["nats"]) as bus, client_for(stack, "A") as client:
        await bus.wait_idle(workers=2)

        def held(worker: str) -> set[str]:
            """Bare names of the adapters a worker reports (heartbeats carry owner/name ids)."""
            return {a.rpartition("/")[2] for a in bus.heartbeats[worker].adapters}

        resident = set().union(*(held(w) for w in bus.heartbeats))
        x, y = [n for n in names if n not in resident][:2]

        async def where(adapter: str, request: Awaitable[object]) -> tuple[str, object]:
            """Send a request; return the worker the scheduler placed it on (and its result)."""
            index = len(bus.assigned)
            result = await request
            return await bus.placed(index, adapter), result

        # X lands on some worker W_x; Y, sent while X runs there, goes to the emptier worker.
        w_x, x_stream = await where(x, long_stream(client, x))
        w_y, _ = await where(y, completion(client, y))
        assert w_x != w_y, (
            f"Y should go to the idle worker while X runs; assignments {bus.assigned}; "
            f"scheduler: {_pool_lines(stack)}"
        )
        await x_stream.close()
        await bus.wait_for(
            lambda: x in held(w_x) and y in held(w_y),
            "heartbeats reporting the adapters resident",
        )
        await bus.wait_idle(workers=2)

        # Both idle: each adapter goes back to the worker that holds it.  One of the two is not the
        # worker that load and worker id alone would pick, so residency is what decided.
        for adapter, expected in [(x, w_x), (y, w_y), (y, w_y), (x, w_x)]:
            worker, _ = await where(adapter, completion(client, adapter))
            assert worker == expected, f"{adapter} went to {worker}, not to {expected} holding it"
        assert y not in held(w_x), "Y was never placed on W_x"

        # W_y full (2 running Y requests): the next Y request goes to W_x rather than wait.
        running = [await where(y, long_stream(client, y)) for _ in range(2)]
        assert [w for w, _ in running] == [w_y, w_y]
        worker, _ = await where(y, completion(client, y))
        assert worker == w_x, "with W_y full, Y should go to the worker with room"
        for _, stream in running:
            await stream.close()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_adapter_placement_prefers_resident_worker(placement_stack):
    asyncio.run(placement_run(placement_stack))
