"""The library's Redis client against a real Sentinel set: the primary is SIGKILLed, Sentinel
promotes the replica, and writes in flight retry onto it within the retry budget; what was
replicated before the crash is all there after it; a Redis that stays down fails, bounded."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.adapters.store import AdapterStore
from loraplex.redis_connect import connect_redis
from loraplex.tooling.ports import free_port
from loraplex.tooling.redis_sentinel import SentinelSet

CONFIG = b'{"peft_type": "LORA", "r": 4}'
META = {"rank": 4, "alpha": 8.0, "targets": ("q_proj", "v_proj")}


async def replicated(r) -> None:  # type: ignore[no-untyped-def]
    """Block until the replica has every write made so far (a marker write, then WAIT): async
    replication may lose the last moment's writes in a crash, which these tests do not measure."""
    await r.set("replicated-marker", os.urandom(4).hex())
    assert await r.wait(1, 5000) == 1


async def test_writes_retry_onto_the_promoted_replica(sentinel_set: SentinelSet) -> None:
    r = connect_redis(sentinel_set.url, retry_s=20.0)
    acked: list[int] = []
    durable = 0  # the highest value a replica had acknowledged before the crash
    killed = asyncio.Event()

    async def writer() -> None:
        nonlocal durable
        while len(acked) < 40 or not killed.is_set():
            acked.append(await r.incr("n"))  # raises if the failover outlasts the retries
            if not killed.is_set() and await r.wait(1, 1000) == 1:
                durable = acked[-1]
            await asyncio.sleep(0.01)

    try:
        task = asyncio.create_task(writer())
        while len(acked) < 20:
            await asyncio.sleep(0.01)
        old = await asyncio.to_thread(sentinel_set.kill_primary)
        killed.set()
        new = await asyncio.to_thread(sentinel_set.wait_failover, old)
        await asyncio.wait_for(task, 30)
        # every write succeeded (none raised), the last ones on the promoted replica, which
        # continued from at least what it had acknowledged before the crash
        assert new != old and durable >= 20
        assert int(await r.get("n")) == acked[-1] > durable
    finally:
        await r.aclose()


async def test_adapters_registered_before_are_there_after_and_writes_go_on(
    sentinel_set: SentinelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "20")  # a loaded CI box may fail over slowly
    store = AdapterStore.from_url(sentinel_set.url, prefix="failover")
    try:
        before = [os.urandom(5000 + i) for i in range(3)]
        for i, w in enumerate(before):
            await store.register(f"before-{i}", "alice", CONFIG, w, **META)
        await replicated(store.redis)
        old = sentinel_set.kill_primary()
        # registered while the Sentinels have not yet promoted anyone: retried, not refused
        during = await store.register("during", "alice", CONFIG, b"d" * 7000, **META)
        assert sentinel_set.wait_failover(old) != old
        for i, w in enumerate(before):
            assert (await store.fetch(f"alice/before-{i}")).weights_bytes == w
        assert (await store.fetch("alice/during")).info == during.info
        listed = {a.name for a in await store.list_for("alice")}
        assert listed == {"before-0", "before-1", "before-2", "during"}
    finally:
        await store.close()


async def test_a_redis_that_stays_down_fails_within_the_budget(
    sentinel_set: SentinelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "1")
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0", retry_s=0.5)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(dead.get("x"), 10)  # wait_for: a hang fails the test
    await dead.aclose()
    for s in sentinel_set.sentinels:
        s.stop()
    store = AdapterStore.from_url(sentinel_set.url)
    with pytest.raises(StoreUnavailableError):
        await asyncio.wait_for(store.get("alice/x"), 30)
    await store.close()
