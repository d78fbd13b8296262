"""The events of streamed background responses, kept so that a client can resume the stream from
any gateway replica (OpenAI's ``GET /v1/responses/{id}?stream=true&starting_after=N``).

Only the gateway generating a response appends to its log (``responses_background.py``), so a
log is in order; readers page through it by position.  In Redis (``RedisEventLog``) a log is the
LIST ``{p}:response_events:{tenant}:{id}``, expiring with the kept responses (``ttl_s``); without
Redis it lives in this gateway's memory (``MemoryEventLog``, at most ``MAX_LOGS`` logs).  The
writer bounds each log's bytes (``max_bytes``, ``--responses-max-kb``: past it text deltas are no
longer logged, the closing events always are).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis

from loraplex.gateway.response_store import StoreLimits
from loraplex.gateway.response_store_redis import unavailable

Event = dict[str, Any]
MAX_LOGS = 4096  # in memory: the oldest go first


def encode_event(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class EventLog(Protocol):
    limits: StoreLimits

    async def append(self, tenant: str, response_id: str, events: list[bytes]) -> None:
        """Add encoded events at the end (raises ``ResponseStoreUnavailableError``)."""
        ...

    async def read(self, tenant: str, response_id: str, start: int) -> list[Event]:
        """The events from position ``start`` on ([] for a log that does not exist)."""
        ...

    async def delete(self, tenant: str, response_id: str) -> None: ...


class MemoryEventLog:
    def __init__(self, limits: StoreLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self._logs: OrderedDict[tuple[str, str], tuple[list[bytes], float]] = OrderedDict()

    async def append(self, tenant: str, response_id: str, events: list[bytes]) -> None:
        key = (tenant, response_id)
        kept = self._live().pop(key, ([], 0.0))[0]
        self._logs[key] = ([*kept, *events], self.clock() + self.limits.ttl_s)
        while len(self._logs) > MAX_LOGS:
            self._logs.popitem(last=False)

    async def read(self, tenant: str, response_id: str, start: int) -> list[Event]:
        hit = self._live().get((tenant, response_id))
        return [] if hit is None else [json.loads(e) for e in hit[0][start:]]

    async def delete(self, tenant: str, response_id: str) -> None:
        self._logs.pop((tenant, response_id), None)

    def _live(self) -> OrderedDict[tuple[str, str], tuple[list[bytes], float]]:
        now = self.clock()
        for key in [k for k, (_, expiry) in self._logs.items() if expiry <= now]:
            del self._logs[key]
        return self._logs


class RedisEventLog:
    def __init__(self, redis: aioredis.Redis, limits: StoreLimits, prefix: str = "loraplex"):
        self.redis, self.limits, self.prefix = redis, limits, prefix

    def key(self, tenant: str, response_id: str) -> str:
        return f"{self.prefix}:response_events:{tenant}:{response_id}"

    @unavailable
    async def append(self, tenant: str, response_id: str, events: list[bytes]) -> None:
        if not events:
            return
        key = self.key(tenant, response_id)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.rpush(key, *events)
            tx.expire(key, self.limits.ttl_s)
            await tx.execute()

    @unavailable
    async def read(self, tenant: str, response_id: str, start: int) -> list[Event]:
        raw = await self.redis.lrange(self.key(tenant, response_id), start, -1)
        return [json.loads(e) for e in raw]

    @unavailable
    async def delete(self, tenant: str, response_id: str) -> None:
        await self.redis.delete(self.key(tenant, response_id))
