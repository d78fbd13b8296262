"""``BatchStore`` in Redis: every gateway replica reads what any of them stored, and one takes
over a batch whose gateway died (its lease expired).

``{p}`` is the deployment prefix; tenant names hold no ``:`` and ids match ``objects.FILE_ID`` /
``BATCH_ID``, so no key can be read as another's.

======================================  ======  ===================================================
key                                     type    holds
======================================  ======  ===================================================
``{p}:file:{tenant}:{id}``              HASH    ``meta`` (the file object, JSON), ``content``
``{p}:files:{tenant}``                  ZSET    the tenant's file ids by creation time
``{p}:files:{tenant}:bytes``            HASH    id -> size, for the byte budget
``{p}:batch:{tenant}:{id}``             STRING  the batch object (JSON)
``{p}:batches:{tenant}``                ZSET    the tenant's batch ids by creation time
``{p}:batch:{tenant}:{id}:results``     HASH    line index -> ``1``/``0`` (answered / failed) + line
``{p}:batches:active``                  SET     ``tenant/id`` of every batch still running
``{p}:batches:active:{tenant}``         SET     the tenant's running batch ids
``{p}:batch:{tenant}:{id}:lease``       STRING  the id of the gateway running it, with a TTL
======================================  ======  ===================================================

Everything but the active sets and leases expires ``ttl_s`` after it was written; a file's own
key at its ``expires_at`` when that is sooner (the next upload drops it from the index and the
byte budget).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from loraplex.gateway.batches.errors import BatchLimitError, BatchStoreUnavailableError
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.gateway.batches.store import (
    Change,
    Record,
    quota_error,
    too_many_batches,
)
from loraplex.redis_connect import unavailable_as

# KEYS: file, index, sizes.  ARGV: id, meta, content, now, ttl, most files, most bytes, forced,
# the file's life (s), the key prefix of the tenant's files.  -1: too many files; -2: too many
# bytes (nothing written).  A file whose key expired (its own, shorter life) leaves the budget.
_PUT_FILE = """
local index, sizes = KEYS[2], KEYS[3]
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl)) do
  redis.call('HDEL', sizes, id)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if redis.call('EXISTS', ARGV[10] .. id) == 0 then
    redis.call('ZREM', index, id)
    redis.call('HDEL', sizes, id)
  end
end
if ARGV[8] ~= '1' then
  local total = 0
  for _, size in ipairs(redis.call('HVALS', sizes)) do total = total + tonumber(size) end
  if redis.call('ZCARD', index) + 1 > tonumber(ARGV[6]) then return -1 end
  if total + string.len(ARGV[3]) > tonumber(ARGV[7]) then return -2 end
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'content', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]))
redis.call('ZADD', index, now, ARGV[1])
redis.call('HSET', sizes, ARGV[1], string.len(ARGV[3]))
redis.call('EXPIRE', index, ttl)
redis.call('EXPIRE', sizes, ttl)
return 1
"""
# KEYS: the tenant's active set, the active set, lease.  ARGV: id, tenant/id, owner, ttl ms, most.
_ACTIVATE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""
# KEYS: lease.  ARGV: owner, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

unavailable = unavailable_as(
    lambda: BatchStoreUnavailableError("the batch store (Redis) is unavailable, try again")
)
_UPDATE_RETRIES = 32


class RedisBatchStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        limits: BatchLimits,
        prefix: str = "loraplex",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.limits = limits
        self.prefix = prefix
        self.clock = clock
        self._put_file = redis.register_script(_PUT_FILE)
        self._activate = redis.register_script(_ACTIVATE)
        self._renew = redis.register_script(_RENEW)

    def _file(self, tenant: str, file_id: str) -> str:
        return f"{self.prefix}:file:{tenant}:{file_id}"

    def _files(self, tenant: str) -> str:
        return f"{self.prefix}:files:{tenant}"

    def _batch(self, tenant: str, batch_id: str) -> str:
        return f"{self.prefix}:batch:{tenant}:{batch_id}"

    def _batches(self, tenant: str) -> str:
        return f"{self.prefix}:batches:{tenant}"

    def _active(self, tenant: str | None = None) -> str:
        return f"{self.prefix}:batches:active" + (f":{tenant}" if tenant else "")

    # ---- files ---------------------------------------------------------------------------
    @unavailable
    async def put_file(self, tenant: str, meta: Record, content: bytes, forced: bool) -> None:
        index = self._files(tenant)
        done = int(await self._put_file(
            keys=[self._file(tenant, meta["id"]), index, index + ":bytes"],
            args=[
                meta["id"], json.dumps(meta), content, self.clock(), self.limits.ttl_s,
                self.limits.files_per_tenant, self.limits.tenant_bytes, "1" if forced else "0",
                max(1, int(meta["expires_at"]) - int(meta["created_at"])), self._file(tenant, ""),
            ],
        ))  # fmt: skip
        if done < 0:
            count = int(await self.redis.zcard(index))
            sizes = await self.redis.hvals(index + ":bytes")
            raise quota_error(self.limits, count, sum(int(s) for s in sizes), len(content)) or (
                BatchStoreUnavailableError("the file could not be stored, try again")
            )

    @unavailable
    async def get_file(self, tenant: str, file_id: str) -> Record | None:
        raw = await self.redis.hget(self._file(tenant, file_id), "meta")
        return None if raw is None else json.loads(raw)

    @unavailable
    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        return await self.redis.hget(self._file(tenant, file_id), "content")

    @unavailable
    async def list_files(self, tenant: str) -> list[Record]:
        ids = await self.redis.zrevrange(self._files(tenant), 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(self._file(tenant, i.decode()), "meta")
            raws = await pipe.execute()
        return [json.loads(r) for r in raws if r is not None]

    @unavailable
    async def delete_file(self, tenant: str, file_id: str) -> Record | None:
        meta = await self.get_file(tenant, file_id)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(self._file(tenant, file_id))
            tx.zrem(self._files(tenant), file_id)
            tx.hdel(self._files(tenant) + ":bytes", file_id)
            deleted, *_ = await tx.execute()
        return meta if deleted else None

    # ---- batches -------------------------------------------------------------------------
    @unavailable
    async def put_batch(self, tenant: str, batch: Record) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(self._batch(tenant, batch["id"]), json.dumps(batch), ex=self.limits.ttl_s)
            tx.zadd(self._batches(tenant), {batch["id"]: batch["created_at"]})
            tx.zremrangebyscore(self._batches(tenant), "-inf", self.clock() - self.limits.ttl_s)
            tx.expire(self._batches(tenant), self.limits.ttl_s)
            await tx.execute()

    @unavailable
    async def get_batch(self, tenant: str, batch_id: str) -> Record | None:
        raw = await self.redis.get(self._batch(tenant, batch_id))
        return None if raw is None else json.loads(raw)

    @unavailable
    async def list_batches(self, tenant: str) -> list[Record]:
        ids = await self.redis.zrevrange(self._batches(tenant), 0, -1)
        raws = await self.redis.mget([self._batch(tenant, i.decode()) for i in ids]) if ids else []
        return [json.loads(r) for r in raws if r is not None]

    @unavailable
    async def update_batch(self, tenant: str, batch_id: str, change: Change) -> Record | None:
        key = self._batch(tenant, batch_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_UPDATE_RETRIES):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    old = json.loads(raw)
                    new = change(dict(old))
                    if new is None:
                        await pipe.unwatch()
                        return old
                    pipe.multi()
                    pipe.set(key, json.dumps(new), keepttl=True)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue
        raise BatchStoreUnavailableError(f"batch {batch_id}: too much contention, try again")

    @unavailable
    async def add_result(
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record
    ) -> None:
        key = self._batch(tenant, batch_id) + ":results"
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hsetnx(key, str(index), ("1" if ok else "0") + json.dumps(line))
            tx.expire(key, self.limits.ttl_s)
            await tx.execute()

    @unavailable
    async def results(self, tenant: str, batch_id: str) -> dict[int, tuple[bool, Record]]:
        raw = await self.redis.hgetall(self._batch(tenant, batch_id) + ":results")
        return {int(k): (v[:1] == b"1", json.loads(v[1:])) for k, v in raw.items()}

    # ---- who runs it ---------------------------------------------------------------------
    @unavailable
    async def activate(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> None:
        keys = [self._active(tenant), self._active(), self._batch(tenant, batch_id) + ":lease"]
        args = [batch_id, f"{tenant}/{batch_id}", owner, int(lease_s * 1000)]
        if not int(await self._activate(keys=keys, args=[*args, self.limits.active_per_tenant])):
            raise BatchLimitError(too_many_batches(self.limits))

    @unavailable
    async def claim(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        if not await self.redis.sismember(self._active(tenant), batch_id):
            return False
        lease = self._batch(tenant, batch_id) + ":lease"
        return bool(await self.redis.set(lease, owner, nx=True, px=int(lease_s * 1000)))

    @unavailable
    async def renew(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        lease = self._batch(tenant, batch_id) + ":lease"
        return bool(int(await self._renew(keys=[lease], args=[owner, int(lease_s * 1000)])))

    @unavailable
    async def orphans(self) -> list[tuple[str, str]]:
        members = [m.decode() for m in await self.redis.smembers(self._active())]
        pairs = [tuple(m.split("/", 1)) for m in members if "/" in m]
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant, batch_id in pairs:
                pipe.exists(self._batch(tenant, batch_id) + ":lease")
            held = await pipe.execute()
        return [(t, b) for (t, b), h in zip(pairs, held, strict=True) if not h]

    @unavailable
    async def deactivate(self, tenant: str, batch_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.srem(self._active(tenant), batch_id)
            tx.srem(self._active(), f"{tenant}/{batch_id}")
            tx.delete(self._batch(tenant, batch_id) + ":lease")
            await tx.execute()
