"""The Responses API's store in Redis: every gateway replica reads what any of them stored.

``{p}`` is the deployment prefix (``--redis-prefix``); tenant names hold no ``:``, response ids
match ``resp_[0-9a-f]{32}``, so no key can be read as another's.

========================================  ======  ================================================
key                                       type    holds
========================================  ======  ================================================
``{p}:response:{tenant}:{id}``            STRING  the stored response (JSON), expiring ``ttl_s``
``{p}:responses:{tenant}``                ZSET    the tenant's response ids by time stored: the
                                                  oldest go first past ``per_tenant``
========================================  ======  ================================================

The record and its index entry are written in one MULTI/EXEC; entries older than ``ttl_s`` are
trimmed from the index on each write (their records expire on their own).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from loraplex.gateway.response_store import (
    ResponseStoreUnavailableError,
    StoredResponse,
    StoreLimits,
)

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_as_typed(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Redis connection failures (after the client's retries) as ResponseStoreUnavailableError."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise ResponseStoreUnavailableError(
                "the response store (Redis) is unavailable, try again"
            ) from e

    return wrapper


class RedisResponseStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        limits: StoreLimits,
        prefix: str = "loraplex",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.limits = limits
        self.prefix = prefix
        self.clock = clock

    def record_key(self, tenant: str, response_id: str) -> str:
        return f"{self.prefix}:response:{tenant}:{response_id}"

    def index_key(self, tenant: str) -> str:
        return f"{self.prefix}:responses:{tenant}"

    @_unavailable_as_typed
    async def put(self, tenant: str, record: StoredResponse) -> bool:
        raw = record.encode()
        if len(raw) > self.limits.max_bytes:
            return False
        response_id = record.response["id"]
        ttl, now, index = self.limits.ttl_s, self.clock(), self.index_key(tenant)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(self.record_key(tenant, response_id), raw, ex=ttl)
            tx.zadd(index, {response_id: now})
            tx.zremrangebyscore(index, "-inf", now - ttl)
            tx.expire(index, ttl)
            tx.zcard(index)
            *_, count = await tx.execute()
        over = int(count) - self.limits.per_tenant
        if over > 0:
            dropped = await self.redis.zpopmin(index, over)
            if dropped:
                ids = [d[0].decode() if isinstance(d[0], bytes) else d[0] for d in dropped]
                await self.redis.delete(*(self.record_key(tenant, i) for i in ids))
        return True

    @_unavailable_as_typed
    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        raw = await self.redis.get(self.record_key(tenant, response_id))
        return None if raw is None else StoredResponse.decode(raw)

    @_unavailable_as_typed
    async def delete(self, tenant: str, response_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(self.record_key(tenant, response_id))
            tx.zrem(self.index_key(tenant), response_id)
            deleted, _ = await tx.execute()
        return bool(deleted)
