"""``BatchStore`` in Redis: every gateway replica reads what any of them stored, and one takes
over a batch whose gateway died (its lease expired).

``{p}`` is the deployment prefix; tenant names hold no ``:`` and ids match ``objects.FILE_ID`` /
``BATCH_ID``, so no key can be read as another's.

======================================  ======  ===================================================
key                                     type    holds
======================================  ======  ===================================================
``{p}:file:{tenant}:{id}``              HASH    ``meta`` (the file object, JSON), ``content``
``{p}:files:{tenant}``                  ZSET    the tenant's file ids by creation time
``{p}:files:{tenant}:bytes``            HASH    file id -> size, batch id -> its answers' bytes
``{p}:batch:{tenant}:{id}``             STRING  the batch object (JSON)
``{p}:batches:{tenant}``                ZSET    the tenant's batch ids by creation time
``{p}:batch:{tenant}:{id}:results``     HASH    line index -> ``1``/``0`` (answered / failed) + line
``{p}:batch:{tenant}:{id}:answered``    HASH    line index -> ``1``/``0`` (what a run resumes from)
``{p}:batches:active``                  SET     ``tenant/id`` of every batch still running
``{p}:batches:active:{tenant}``         SET     the tenant's running batch ids
``{p}:batch:{tenant}:{id}:lease``       STRING  the id of the gateway running it, with a TTL
======================================  ======  ===================================================

Everything but the active sets and leases expires ``ttl_s`` after it was written; a file's own
key at its ``expires_at`` when that is sooner (the next write to the budget drops it from the
index and the byte budget).  A batch's answers are dropped, with their bytes, once its output and
error files are written.  The scripts that check the budget are in ``store_scripts.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from loraplex.gateway.batches import store_scripts as lua
from loraplex.gateway.batches.budget import (
    Usage,
    budget_error,
    encode_result,
    quota_error,
    too_many_batches,
    too_many_kept,
)
from loraplex.gateway.batches.errors import BatchLimitError, BatchStoreUnavailableError
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.gateway.batches.store import Change, Record
from loraplex.redis_connect import unavailable_as

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
        self._put_file = redis.register_script(lua.PUT_FILE)
        self._usage = redis.register_script(lua.USAGE)
        self._add_result = redis.register_script(lua.ADD_RESULT)
        self._put_batch = redis.register_script(lua.PUT_BATCH)
        self._activate = redis.register_script(lua.ACTIVATE)
        self._renew = redis.register_script(lua.RENEW)

    def _file(self, tenant: str, file_id: str) -> str:
        return f"{self.prefix}:file:{tenant}:{file_id}"

    def _files(self, tenant: str) -> str:
        return f"{self.prefix}:files:{tenant}"

    def _batch(self, tenant: str, batch_id: str) -> str:
        return f"{self.prefix}:batch:{tenant}:{batch_id}"

    def _batches(self, tenant: str) -> str:
        return f"{self.prefix}:batches:{tenant}"

    def _prefixes(self, tenant: str) -> list[str]:
        """What ``store_scripts._USED`` needs: the key prefix of the tenant's files, batches."""
        return [self._file(tenant, ""), self._batch(tenant, "")]

    def _active(self, tenant: str | None = None) -> str:
        return f"{self.prefix}:batches:active" + (f":{tenant}" if tenant else "")

    # ---- files ---------------------------------------------------------------------------
    @unavailable
    async def put_file(
        self, tenant: str, meta: Record, content: bytes | bytearray, forced: bool
    ) -> None:
        index = self._files(tenant)
        done = int(await self._put_file(
            keys=[self._file(tenant, meta["id"]), index, index + ":bytes"],
            args=[
                meta["id"], json.dumps(meta), content, self.clock(), self.limits.ttl_s,
                self.limits.files_per_tenant, self.limits.tenant_bytes, "1" if forced else "0",
                max(1, int(meta["expires_at"]) - int(meta["created_at"])),
                *self._prefixes(tenant),
            ],
        ))  # fmt: skip
        if done < 0:
            used = await self.usage(tenant)
            raise quota_error(self.limits, used.files, used.bytes, len(content)) or (
                BatchStoreUnavailableError("the file could not be stored, try again")
            )

    @unavailable
    async def usage(self, tenant: str) -> Usage:
        index = self._files(tenant)
        files, total = await self._usage(
            keys=[index, index + ":bytes"],
            args=[self.clock(), self.limits.ttl_s, *self._prefixes(tenant)],
        )
        live = f"({self.clock() - self.limits.ttl_s}"  # the expired ones put_batch trims
        batches = await self.redis.zcount(self._batches(tenant), live, "+inf")
        return Usage(int(files), int(total), int(batches))

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
        keys = [self._batch(tenant, batch["id"]), self._batches(tenant)]
        args = [batch["id"], json.dumps(batch), batch["created_at"], self.clock()]
        if not int(await self._put_batch(
            keys=keys, args=[*args, self.limits.ttl_s, self.limits.batches_kept]
        )):  # fmt: skip
            raise too_many_kept(self.limits)

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
    async def page_batches(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[Record], bool]:
        index, start = self._batches(tenant), 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                return [], False
            start = int(rank) + 1
        ids = await self.redis.zrevrange(index, start, start + limit)  # one more: has_more
        keys = [self._batch(tenant, i.decode()) for i in ids[:limit]]
        raws = await self.redis.mget(keys) if keys else []
        return [json.loads(r) for r in raws if r is not None], len(ids) > limit

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
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record, forced: bool = False
    ) -> None:
        raw = await encode_result(ok, line, self.limits, forced)
        key, files = self._batch(tenant, batch_id), self._files(tenant)
        done, used = await self._add_result(
            keys=[key + ":results", key + ":answered", files, files + ":bytes"],
            args=[
                index, raw, self.clock(), self.limits.ttl_s, self.limits.tenant_bytes,
                *self._prefixes(tenant), batch_id, "1" if forced else "0",
            ],
        )  # fmt: skip
        if int(done) < 0:
            raise budget_error(self.limits, int(used), len(raw))

    @unavailable
    async def answered(self, tenant: str, batch_id: str) -> dict[int, bool]:
        raw = await self.redis.hgetall(self._batch(tenant, batch_id) + ":answered")
        return {int(k): v == b"1" for k, v in raw.items()}

    @unavailable
    async def result_lines(
        self, tenant: str, batch_id: str, indices: list[int]
    ) -> dict[int, tuple[bool, bytes]]:
        if not indices:
            return {}
        raws: list[Any] = await self.redis.hmget(
            self._batch(tenant, batch_id) + ":results", [str(i) for i in indices]
        )
        return {i: (r[:1] == b"1", r[1:]) for i, r in zip(indices, raws, strict=True) if r}

    @unavailable
    async def drop_results(self, tenant: str, batch_id: str) -> None:
        key = self._batch(tenant, batch_id)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(key + ":results", key + ":answered")
            tx.hdel(self._files(tenant) + ":bytes", batch_id)
            await tx.execute()

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
