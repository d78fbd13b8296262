"""The Responses API's store in Redis: every gateway replica reads what any of them stored.

``{p}`` is the deployment prefix (``--redis-prefix``); tenant names hold no ``:``, response ids
match ``resp_[0-9a-f]{32}``, so no key can be read as another's.

========================================  ======  ================================================
key                                       type    holds
========================================  ======  ================================================
``{p}:response:{tenant}:{id}``            STRING  the stored response (JSON), expiring ``ttl_s``
``{p}:responses:{tenant}``                ZSET    the tenant's response ids by time stored
``{p}:responses:{tenant}:bytes``          HASH    id -> size of its record, for the byte budget
========================================  ======  ================================================

One script writes a record and keeps the tenant within its limits, atomically: index entries
older than ``ttl_s`` go (their records expired on their own), then the oldest responses until the
tenant holds at most ``per_tenant`` of them and ``tenant_bytes`` in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from loraplex.gateway.response_store import (
    ResponseStoreUnavailableError,
    StoredResponse,
    StoreLimits,
)
from loraplex.redis_connect import unavailable_as

# KEYS: record, index, sizes.  ARGV: id, record, now, ttl, most responses, most bytes, record
# key prefix (the evicted ones' keys are that prefix and their id).
_PUT = """
local index, sizes = KEYS[2], KEYS[3]
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
redis.call('ZADD', index, now, ARGV[1])
redis.call('HSET', sizes, ARGV[1], string.len(ARGV[2]))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl)) do
  redis.call('HDEL', sizes, id)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
local total = 0
for _, size in ipairs(redis.call('HVALS', sizes)) do total = total + tonumber(size) end
local count = redis.call('ZCARD', index)
while count > tonumber(ARGV[5]) or total > tonumber(ARGV[6]) do
  local id = redis.call('ZPOPMIN', index)[1]
  total = total - tonumber(redis.call('HGET', sizes, id) or '0')
  redis.call('HDEL', sizes, id)
  redis.call('DEL', ARGV[7] .. id)
  count = count - 1
end
redis.call('EXPIRE', index, ttl)
redis.call('EXPIRE', sizes, ttl)
return 1
"""

# Redis errors as the store's typed 503 (response_events.py's log uses it too)
unavailable = unavailable_as(
    lambda: ResponseStoreUnavailableError("the response store (Redis) is unavailable, try again")
)


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
        self._put = redis.register_script(_PUT)

    def record_key(self, tenant: str, response_id: str) -> str:
        return f"{self.prefix}:response:{tenant}:{response_id}"

    def index_key(self, tenant: str) -> str:
        return f"{self.prefix}:responses:{tenant}"

    def sizes_key(self, tenant: str) -> str:
        return f"{self.prefix}:responses:{tenant}:bytes"

    @unavailable
    async def put(self, tenant: str, record: StoredResponse) -> bool:
        raw = record.encode()
        if len(raw) > self.limits.max_bytes:
            return False
        response_id, limits = record.response["id"], self.limits
        await self._put(
            keys=[
                self.record_key(tenant, response_id),
                self.index_key(tenant),
                self.sizes_key(tenant),
            ],
            args=[
                response_id, raw, self.clock(), limits.ttl_s, limits.per_tenant,
                limits.tenant_bytes, self.record_key(tenant, ""),
            ],
        )  # fmt: skip
        return True

    @unavailable
    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        raw = await self.redis.get(self.record_key(tenant, response_id))
        return None if raw is None else StoredResponse.decode(raw)

    @unavailable
    async def delete(self, tenant: str, response_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(self.record_key(tenant, response_id))
            tx.zrem(self.index_key(tenant), response_id)
            tx.hdel(self.sizes_key(tenant), response_id)
            deleted, *_ = await tx.execute()
        return bool(deleted)
