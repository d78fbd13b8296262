"""The Responses API's store, one contract for both stores: the in-process one (a fake clock) and
the Redis one (a real redis-server): kept, read back, per tenant, bounded in size, count and
time, deleted; and a Redis that cannot be reached is a typed error."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from loraplex.gateway.response_store import (
    MemoryResponseStore,
    ResponseStore,
    ResponseStoreUnavailableError,
    StoredResponse,
    StoreLimits,
    well_formed,
)
from loraplex.gateway.response_store_redis import RedisResponseStore
from loraplex.redis_connect import connect_redis
from loraplex.tooling.ports import free_port

LIMITS = StoreLimits(ttl_s=60, max_bytes=4096, per_tenant=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(text: str = "hi") -> StoredResponse:
    rid = f"resp_{secrets.token_hex(16)}"
    return StoredResponse({"id": rid, "output": [{"type": "message", "text": text}]}, [{"id": "m"}])


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        yield MemoryResponseStore(LIMITS, Clock())
        return
    redis_url = request.getfixturevalue("redis_url")
    client = connect_redis(redis_url)
    try:
        yield RedisResponseStore(client, LIMITS, prefix=f"t-{secrets.token_hex(5)}")
    finally:
        await client.aclose()


async def test_kept_and_read_back_by_its_tenant_only(store: ResponseStore) -> None:
    r = record()
    assert await store.put("alice", r)
    got = await store.get("alice", r.response["id"])
    assert got == r
    assert await store.get("bob", r.response["id"]) is None  # another tenant: as if never kept
    assert not await store.delete("bob", r.response["id"])
    assert await store.get("alice", r.response["id"]) == r  # bob's delete touched nothing


async def test_deleted(store: ResponseStore) -> None:
    r = record()
    await store.put("alice", r)
    assert await store.delete("alice", r.response["id"])
    assert await store.get("alice", r.response["id"]) is None
    assert not await store.delete("alice", r.response["id"])


async def test_too_large_is_not_kept(store: ResponseStore) -> None:
    big = record("x" * LIMITS.max_bytes)
    assert not await store.put("alice", big)
    assert await store.get("alice", big.response["id"]) is None
    small = record("x" * (LIMITS.max_bytes - 200))
    assert await store.put("alice", small)


async def test_a_tenant_keeps_its_newest_only(store: ResponseStore) -> None:
    kept = [record(str(i)) for i in range(LIMITS.per_tenant + 2)]
    bobs = record("bob")
    await store.put("bob", bobs)
    for r in kept:
        await store.put("alice", r)
        if isinstance(store, RedisResponseStore):
            await asyncio.sleep(0.002)  # distinct scores: the order is the time stored
    found = [await store.get("alice", r.response["id"]) for r in kept]
    assert found == [None, None, *kept[2:]]
    assert await store.get("bob", bobs.response["id"]) == bobs  # alice's count is alice's


async def test_a_tenant_keeps_its_byte_budget(store: ResponseStore) -> None:
    store.limits = StoreLimits(ttl_s=60, max_bytes=4096, per_tenant=100, tenant_bytes=10_000)
    kept = [record(str(i) * 3000) for i in range(5)]
    for r in kept:
        assert await store.put("alice", r)
        if isinstance(store, RedisResponseStore):
            await asyncio.sleep(0.002)
    found = [await store.get("alice", r.response["id"]) for r in kept]
    assert found == [None, None, *kept[2:]]  # three of ~3 KB fit in 10 KB
    await store.delete("alice", kept[2].response["id"])  # frees its bytes
    for r in [record("a" * 3000), record("b" * 3000)]:
        await store.put("alice", r)
    assert await store.get("alice", kept[3].response["id"]) is None
    assert await store.get("alice", kept[4].response["id"]) == kept[4]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        StoreLimits(max_bytes=2048, tenant_bytes=1024)
    with pytest.raises(ValueError):
        StoreLimits(ttl_s=0)


async def test_expired_after_the_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(LIMITS, clock)
    first, second = record("1"), record("2")
    await store.put("alice", first)
    clock.now += LIMITS.ttl_s - 1
    await store.put("alice", second)
    assert await store.get("alice", first.response["id"]) == first
    clock.now += 1
    assert await store.get("alice", first.response["id"]) is None
    assert await store.get("alice", second.response["id"]) == second
    clock.now += LIMITS.ttl_s
    assert await store.get("alice", second.response["id"]) is None


async def test_redis_expires_records_and_trims_the_index(redis_url: str) -> None:
    client = connect_redis(redis_url)
    clock = Clock()
    store = RedisResponseStore(client, StoreLimits(1, 4096, 3), prefix="ttl", clock=clock)
    try:
        old = record("old")
        await store.put("alice", old)
        key = store.record_key("alice", old.response["id"])
        assert 0 < await client.ttl(key) <= 1
        clock.now += 5  # the index entry is past the TTL: trimmed at the next write
        await store.put("alice", record("new"))
        members = await client.zrange(store.index_key("alice"), 0, -1)
        assert old.response["id"].encode() not in members and len(members) == 1
        await asyncio.sleep(1.2)
        assert await store.get("alice", old.response["id"]) is None
    finally:
        await client.aclose()


async def test_unreachable_redis_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "0.3")
    client = connect_redis(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    store = RedisResponseStore(client, LIMITS)
    calls: list[Callable[[], object]] = [
        lambda: store.put("alice", record()),
        lambda: store.get("alice", "resp_" + "0" * 32),
        lambda: store.delete("alice", "resp_" + "0" * 32),
    ]
    try:
        for call in calls:
            with pytest.raises(ResponseStoreUnavailableError):
                await call()  # type: ignore[misc]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("rid", "ok"),
    [
        ("resp_" + "0a" * 16, True),
        ("resp_" + "0A" * 16, False),
        ("resp_" + "0" * 31, False),
        ("resp_" + "0" * 32 + "\n", False),
        ("resp_" + "0" * 16 + ":x", False),
        ("../resp_" + "0" * 32, False),
    ],
)
def test_only_issued_ids_are_looked_up(rid: str, ok: bool) -> None:
    assert well_formed(rid) is ok
