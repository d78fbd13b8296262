"""Cache-aware placement: prompt prefixes go back to the worker that prefilled them."""

from __future__ import annotations

import asyncio

import pytest

from loraplex.bus import Bus
from loraplex.prefix_keys import prefix_keys
from loraplex.protocol import (
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.prefix_affinity import PrefixAffinity, leading_run
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry
from tests.scheduler.test_service_recovery import FakeWorker, _until

SYSTEM = list(range(100, 150))  # 50 tokens: 3 full blocks of 16 before the last token


# ------------------------------------------------------------------------------------- keys


def test_prefix_keys_are_stable_chained_and_per_adapter() -> None:
    keys = prefix_keys("a", SYSTEM, 16)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert prefix_keys("a", list(SYSTEM), 16) == keys  # bytes, not Python's per-process hash
    assert prefix_keys("a", SYSTEM[:48], 16) == keys[:2]  # the last token's block never counts
    assert prefix_keys("a", SYSTEM[:49], 16) == keys
    assert prefix_keys("b", SYSTEM, 16)[0] != keys[0]
    assert prefix_keys(None, SYSTEM, 16)[0] != keys[0]
    # the scheduler's own keys (no keys in the SUBMIT) are hashed under the request's salt
    aff = PrefixAffinity()
    assert aff.cached_blocks("a", SYSTEM, None, "t:x").keys() == prefix_keys(
        "a", SYSTEM, salt="t:x"
    )
    assert prefix_keys("a", SYSTEM, salt="t:x")[0] != keys[0]
    changed = [7, *SYSTEM[1:]]
    assert all(x != y for x, y in zip(prefix_keys("a", changed, 16), keys, strict=True))


def test_affinity_matches_leading_blocks_and_forgets() -> None:
    aff = PrefixAffinity(capacity_per_worker=4)
    keys = prefix_keys("a", SYSTEM, 16)
    aff.record("w1", keys[:2])
    assert aff.matched_blocks("w1", keys) == 2
    assert aff.matched_blocks("w2", keys) == 0
    other = prefix_keys("b", SYSTEM, 16)
    aff.record("w1", other)  # 2 + 3 keys > capacity 4: the least recent goes...
    assert aff.matched_blocks("w1", other) == 3
    assert aff.matched_blocks("w1", keys) == 1  # ...the deeper block first
    aff.forget("w1")
    assert len(aff) == 0


def test_each_lru_stays_prefix_closed_and_the_binary_search_counts_as_a_walk() -> None:
    """Whatever is recorded and evicted, a worker's LRU never holds a block without the blocks
    before it in the same chain, so the binary search over a prompt's keys finds the same
    leading run as a walk from the first key (prompts: random branches of a tree of prefixes,
    up to 40 blocks; LRUs far smaller than what is placed)."""
    import random

    rng = random.Random(5)
    stems = [[rng.randrange(50_000) for _ in range(641)] for _ in range(6)]
    parent: dict[int, int | None] = {}
    aff = PrefixAffinity(capacity_per_worker=rng.choice([40, 90]))
    checked = 0
    for step in range(1500):
        stem = rng.choice(stems)
        cut = rng.randint(1, 640)
        prompt = stem[:cut] + [rng.randrange(50_000) for _ in range(rng.randint(0, 40))]
        keys = prefix_keys(rng.choice(["a", "b"]), prompt, 16)
        for up, k in zip([None, *keys], keys, strict=False):
            parent[k] = up
        wid = f"w{rng.randrange(3)}"
        if rng.random() < 0.7:
            aff.record(wid, keys, worker_blocks=rng.choice([30, 60, 200]))
        lru = aff._workers.get(wid, {})
        assert all(parent[k] is None or parent[k] in lru for k in lru), f"step {step}"
        walk = 0
        while walk < len(keys) and keys[walk] in lru:
            walk += 1
        assert leading_run(lru, keys) == aff.matched_blocks(wid, keys) == walk
        checked += walk > 0
    assert checked > 300


def test_each_lru_keeps_at_most_its_workers_blocks_and_the_most_recent_keys() -> None:
    """The LRU of a worker with 64 KV blocks never holds more than 64 keys however much is
    placed there, and what it keeps are the most recently placed prompts (batches of an eighth
    of the capacity leave from the front); the index of first blocks follows evictions."""
    aff = PrefixAffinity(capacity_per_worker=1000)
    prompts = [[10_000 * p + i for i in range(33)] for p in range(300)]  # 2 blocks each
    for p in prompts:
        aff.record("w", prefix_keys("a", p, 16), worker_blocks=64)
        assert len(aff) <= 64
    assert len(aff) >= 64 - 64 // 8
    for p in prompts[-28:]:  # the last 56 keys placed are all still there
        assert aff.matched_blocks("w", prefix_keys("a", p, 16)) == 2
    assert aff.matched_blocks("w", prefix_keys("a", prompts[0], 16)) == 0
    assert aff.holders(prefix_keys("a", prompts[0], 16)[0]) == []
    assert aff.holders(prefix_keys("a", prompts[-1], 16)[0]) == ["w"]
    # a key placed again becomes the most recent: it outlives keys placed after it once
    aff.record("w", prefix_keys("a", prompts[-30], 16), worker_blocks=64)
    for p in prompts[:20]:
        aff.record("w", prefix_keys("a", [7] + p, 16), worker_blocks=64)
    assert aff.matched_blocks("w", prefix_keys("a", prompts[-30], 16)) == 2
    assert aff.matched_blocks("w", prefix_keys("a", prompts[-29], 16)) == 0


def test_the_affinity_is_invisible_to_the_garbage_collector() -> None:
    """Millions of block keys must not be walked by every full collection (a pause of the whole
    scheduler): the per-worker LRUs and the first-block index hold only ints and strings."""
    import gc

    aff = PrefixAffinity()
    for w in range(20):
        for p in range(50):
            aff.record(f"w{w}", prefix_keys(f"a{p % 3}", [p] * 100, 16), worker_blocks=4096)
    gc.collect()
    assert len(aff) == 20 * 50 * 6
    assert not any(gc.is_tracked(lru) for lru in aff._workers.values())
    assert not any(gc.is_tracked(h) for h in aff._holders.values())


# ------------------------------------------------------------------------------- placement


def _registry(balance: float = 0.25) -> WorkerRegistry:
    reg = WorkerRegistry(3.0, prefix_balance=balance)
    for wid in ("w0", "w1"):
        reg.heartbeat(WorkerHeartbeat(wid, "both", 100, 100, 16, 0, 0, 8), now=0.0)
    return reg


def test_placement_prefers_the_worker_with_the_prefix() -> None:
    reg = _registry()
    cached = {"w0": 0, "w1": 3}
    assert reg.place(None, 50, 60).prefill == "w0"  # no affinity: the id breaks the tie
    assert reg.place(None, 50, 60, lambda w: cached[w.hb.worker_id]).prefill == "w1"


def test_disaggregated_placement_uses_affinity_for_both_roles() -> None:
    reg = WorkerRegistry(3.0)
    for wid, role in (("p0", "prefill"), ("p1", "prefill"), ("d0", "decode"), ("d1", "decode")):
        reg.heartbeat(WorkerHeartbeat(wid, role, 100, 100, 16, 0, 0, 8), now=0.0)
    cached = {"p0": 0, "p1": 2, "d0": 0, "d1": 3}
    got = reg.place(None, 50, 60, lambda w: cached[w.hb.worker_id])
    assert (got.prefill, got.decode) == ("p1", "d1")
    assert (reg.place(None, 50, 60).prefill, reg.place(None, 50, 60).decode) == ("p0", "d0")


def test_affinity_yields_to_load_beyond_the_balance() -> None:
    reg = _registry(balance=0.25)
    cached = lambda w: {"w0": 0, "w1": 3}[w.hb.worker_id]  # noqa: E731
    for i in range(2):
        reg.commit("w1", f"busy{i}", 20)  # w1: 2/8 = 0.25 above w0
    assert reg.place(None, 50, 60, cached).prefill == "w1"
    reg.commit("w1", "busy2", 20)  # 3/8 = 0.375 > 0 + 0.25
    assert reg.place(None, 50, 60, cached).prefill == "w0"


def test_affinity_never_waits_for_a_full_worker() -> None:
    reg = _registry()
    reg.commit("w1", "big", 16 * 99)  # 99 of w1's 100 blocks committed
    cached = lambda w: {"w0": 0, "w1": 3}[w.hb.worker_id]  # noqa: E731
    assert reg.place(None, 50, 60, cached).prefill == "w0"


# ------------------------------------------------------------------- the service, live NATS


async def _cluster(
    nats_url: str, routing: bool
) -> tuple[SchedulerService, Bus, dict[str, FakeWorker]]:
    """A scheduler and two fake workers, w-a and w-b, that it knows."""
    service = SchedulerService(SchedulerSettings(nats_url, prefix_routing=routing), {})
    await service.start()
    bus = await Bus.connect(nats_url, "test")
    workers = {wid: FakeWorker(bus, wid) for wid in ("w-a", "w-b")}
    for w in workers.values():
        await w.start()
    await bus.flush()
    await _until(lambda: len(service.registry.workers) == 2)
    return service, bus, workers


async def _submit(
    bus: Bus,
    workers: dict[str, FakeWorker],
    rid: str,
    prompt: list[int],
    keys: list[int] | None = None,
) -> str:
    """SUBMIT one request (with ``keys`` as its prefix keys); the worker it was placed on."""
    sub = SubmitRequest(rid, "t", "gw", prompt, SamplingParams(max_tokens=4), prefix_keys=keys)
    raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
    assert decode(raw.data, SubmitReply).accepted

    def placed() -> str | None:
        for w in workers.values():
            if any(a.request.request_id == rid for a in w.assigned):
                return w.id
        return None

    await _until(lambda: placed() is not None)
    return placed()  # type: ignore[return-value]


@pytest.mark.parametrize("routing", [True, False])
def test_service_sends_a_prefix_back_to_its_worker(nats_url, routing: bool) -> None:
    """P goes to w-a; Q, sent while P runs, to the idle w-b.  Once both finished, a prompt
    starting with Q goes back to w-b (without affinity: to w-a, the id tie-break)."""

    async def run() -> None:
        service, bus, workers = await _cluster(nats_url, routing)

        async def submit(rid: str, prompt: list[int]) -> str:
            return await _submit(bus, workers, rid, prompt)

        p, q = SYSTEM, [x + 500 for x in SYSTEM]
        assert await submit("p", p) == "w-a"
        assert await submit("q", q) == "w-b"
        for rid, wid in (("p", "w-a"), ("q", "w-b")):
            await workers[wid].report(rid, "finished", completion_tokens=4)
        await _until(lambda: not service.inflight)
        assert await submit("q2", q + [1, 2, 3]) == ("w-b" if routing else "w-a")
        for w in workers.values():
            w.stop()
        await service.stop()
        await bus.close()

    asyncio.run(run())


def test_the_scheduler_uses_the_prefix_keys_a_gateway_sent(nats_url) -> None:
    """A SUBMIT's ``prefix_keys`` are what placement matches (here deliberately another
    prompt's, to tell them apart from keys the scheduler would compute); a list of the wrong
    length is not this prompt's and is ignored."""

    async def run() -> None:
        service, bus, workers = await _cluster(nats_url, True)

        async def submit(rid: str, prompt: list[int], keys: list[int] | None = None) -> str:
            return await _submit(bus, workers, rid, prompt, keys)

        p, q = SYSTEM, [x + 500 for x in SYSTEM]
        assert await submit("p", p, prefix_keys(None, p)) == "w-a"
        assert await submit("q", q, prefix_keys(None, q)) == "w-b"
        for rid, wid in (("p", "w-a"), ("q", "w-b")):
            await workers[wid].report(rid, "finished", completion_tokens=4)
        await _until(lambda: not service.inflight)
        # q's prompt with p's keys: placed by the keys, on p's worker
        assert await submit("q2", q + [1, 2, 3], prefix_keys(None, p + [1, 2, 3])) == "w-a"
        # keys of the wrong length: computed from the prompt, so q's worker
        assert await submit("q3", q + [4, 5, 6], prefix_keys(None, p)[:2]) == "w-b"
        for w in workers.values():
            w.stop()
        await service.stop()
        await bus.close()

    asyncio.run(run())
