"""The event logs of streamed background responses, one contract for both: in memory and in a real
redis-server.  In order, read from a position, per tenant, deleted, expiring; Redis that cannot be
reached is the store's typed error."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from loraplex.gateway.response_events import (
    MAX_LOGS,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    encode_event,
)
from loraplex.gateway.response_store import ResponseStoreUnavailableError, StoreLimits
from loraplex.redis_connect import connect_redis
from loraplex.tooling.ports import free_port

LIMITS = StoreLimits(ttl_s=60, max_bytes=4096)


def events(first: int, n: int) -> list[bytes]:
    return [encode_event({"type": "x", "sequence_number": i}) for i in range(first, first + n)]


@pytest.fixture(params=["memory", "redis"])
async def log(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        yield MemoryEventLog(LIMITS)
        return
    client = connect_redis(request.getfixturevalue("redis_url"))
    try:
        yield RedisEventLog(client, LIMITS, prefix=f"t-{secrets.token_hex(5)}")
    finally:
        await client.aclose()


async def test_appended_in_order_and_read_from_a_position(log: EventLog) -> None:
    rid = f"resp_{secrets.token_hex(16)}"
    assert await log.read("alice", rid, 0) == []
    await log.append("alice", rid, events(0, 3))
    await log.append("alice", rid, events(3, 2))
    assert [e["sequence_number"] for e in await log.read("alice", rid, 0)] == [0, 1, 2, 3, 4]
    assert [e["sequence_number"] for e in await log.read("alice", rid, 3)] == [3, 4]
    assert await log.read("alice", rid, 5) == []
    assert await log.read("bob", rid, 0) == []  # another tenant's id reads as none
    await log.delete("alice", rid)
    assert await log.read("alice", rid, 0) == []


async def test_memory_logs_expire_and_are_bounded_in_number() -> None:
    now = [0.0]
    log = MemoryEventLog(LIMITS, clock=lambda: now[0])
    await log.append("alice", "resp_a", events(0, 1))
    now[0] = 61.0
    assert await log.read("alice", "resp_a", 0) == []
    for i in range(MAX_LOGS + 1):
        await log.append("alice", f"resp_{i}", events(0, 1))
    assert await log.read("alice", "resp_0", 0) == []  # the oldest went
    assert len(await log.read("alice", f"resp_{MAX_LOGS}", 0)) == 1


async def test_redis_logs_expire_with_the_kept_responses(redis_url: str) -> None:
    client = connect_redis(redis_url)
    try:
        log = RedisEventLog(client, LIMITS, prefix=f"t-{secrets.token_hex(5)}")
        await log.append("alice", "resp_a", events(0, 2))
        assert 0 < await client.ttl(log.key("alice", "resp_a")) <= LIMITS.ttl_s
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_the_stores_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "0.2")
    client = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        log = RedisEventLog(client, LIMITS)
        for call in (log.append("a", "resp_x", events(0, 1)), log.read("a", "resp_x", 0)):
            with pytest.raises(ResponseStoreUnavailableError):
                await call
    finally:
        await client.aclose()
