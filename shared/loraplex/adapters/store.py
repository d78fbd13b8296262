"""``AdapterStore``: adapter metadata and weight blobs in Redis (layout: ``adapters.keys``).

Registration is atomic: the blob is staged under a fresh version key (with a TTL), then one
MULTI/EXEC, guarded by WATCH on the metadata key, makes it permanent, writes the metadata that
points at it and (on replace) unlinks the previous version.  Readers never see a half-written
adapter.  Every fetch verifies sha256.  Tenancy: an adapter a tenant may not see does not exist
for it (same error as a missing one); ``fetch`` is for trusted workers and skips tenancy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterIntegrityError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.adapters.info import AdapterInfo, FetchedAdapter, Registered, check_visibility
from loraplex.adapters.keys import DEFAULT_PREFIX, StoreKeys
from loraplex.adapters.redis_conn import connect_redis, unavailable_as_typed
from loraplex.errors import AdapterNotFoundError
from loraplex.lora.names import NAME_PATTERN, validate_name

CHUNK_SIZE = 512 * 1024
STAGING_TTL_S = 3600  # a staged blob whose upload died disappears after this
_CHUNKS_PER_ROUNDTRIP = 16
_WATCH_RETRIES = 16


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class AdapterStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        chunk_size: int = CHUNK_SIZE,
        max_bytes: int | None = None,
        staging_ttl_s: int = STAGING_TTL_S,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.redis = redis
        self.keys = StoreKeys(prefix)
        self.chunk_size = chunk_size
        self.max_bytes = max_bytes
        self.staging_ttl_s = staging_ttl_s

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> AdapterStore:
        """A store over a retrying client: reconnects with backoff when Redis restarts."""
        return cls(connect_redis(url), **kwargs)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """Whether Redis answers within ``timeout_s`` (for readiness; never raises)."""
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), timeout_s))
        except Exception:
            return False

    # ---- reads ---------------------------------------------------------------------------
    @unavailable_as_typed
    async def get(self, name: str) -> AdapterInfo | None:
        """Metadata of ``name`` regardless of tenancy (trusted callers), or None."""
        if not NAME_PATTERN.match(name or ""):
            return None
        raw = await self.redis.hgetall(self.keys.meta(name))
        return AdapterInfo.from_redis(raw) if raw else None

    async def get_for(self, tenant: str, name: str) -> AdapterInfo:
        info = await self.get(name)
        if info is None or not info.visible_to(tenant):
            raise AdapterNotFoundError(f"adapter {name!r} not found")
        return info

    @unavailable_as_typed
    async def list_for(self, tenant: str) -> list[AdapterInfo]:
        """Adapters ``tenant`` may see (its own and public ones), sorted by name."""
        names = sorted(n.decode() for n in await self.redis.smembers(self.keys.index))
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.hgetall(self.keys.meta(n))
            rows = await pipe.execute()
        infos = (AdapterInfo.from_redis(raw) for raw in rows if raw)
        return [i for i in infos if i.visible_to(tenant)]

    async def fetch_weights(self, name: str) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors) of the live version, sha-verified."""
        got = await self.fetch(name)
        return got.config_bytes, got.weights_bytes

    @unavailable_as_typed
    async def fetch(self, name: str) -> FetchedAdapter:
        """The live version with its metadata; raises AdapterIntegrityError on a sha mismatch."""
        for _ in range(3):  # a concurrent replace unlinks the version being read: read again
            info = await self.get(name)
            if info is None:
                raise AdapterNotFoundError(f"adapter {name!r} not found")
            values = await self._read_blob(info)
            if values is None:
                continue
            config, weights = values
            if await asyncio.to_thread(_sha256, weights) != info.sha256:
                raise AdapterIntegrityError(
                    f"adapter {name!r} v{info.version}: weights do not match their sha256"
                )
            if info.config_sha256 and _sha256(config) != info.config_sha256:
                raise AdapterIntegrityError(
                    f"adapter {name!r} v{info.version}: adapter_config.json does not match its sha256"
                )
            return FetchedAdapter(info, config, weights)
        raise AdapterIntegrityError(f"adapter {name!r}: chunks of the live version are missing")

    async def _read_blob(self, info: AdapterInfo) -> tuple[bytes, bytes] | None:
        blob = self.keys.blob(info.name, info.version)
        config = await self.redis.hget(blob, "config")
        if config is None:
            return None
        parts: list[bytes] = []
        for start in range(0, info.chunks, _CHUNKS_PER_ROUNDTRIP):
            fields = [str(i) for i in range(start, min(start + _CHUNKS_PER_ROUNDTRIP, info.chunks))]
            got = await self.redis.hmget(blob, fields)
            if any(g is None for g in got):
                return None
            parts.extend(got)
        return config, b"".join(parts)

    # ---- writes --------------------------------------------------------------------------
    @unavailable_as_typed
    async def check_can_register(self, owner: str, name: str, replace: bool) -> None:
        """Cheap pre-check (before validation work): raises AdapterExistsError if taken."""
        _check_takeover(await self.get(validate_name(name)), owner, name, replace)

    @unavailable_as_typed
    async def register(
        self,
        name: str,
        owner: str,
        config_bytes: bytes,
        weights_bytes: bytes,
        *,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        visibility: str | None = None,
        replace: bool = False,
    ) -> Registered:
        """Store a (validated) adapter; on ``replace`` the owner's previous version is removed.
        ``visibility=None``: private for a new adapter, the previous version's on replace."""
        validate_name(name)
        if visibility is not None:
            check_visibility(visibility)
        size = len(config_bytes) + len(weights_bytes)
        if self.max_bytes is not None and size > self.max_bytes:
            raise AdapterTooLargeError(
                f"adapter {name!r} is {size} bytes; the limit is {self.max_bytes} bytes"
            )
        _check_takeover(await self.get(name), owner, name, replace)
        version = int(await self.redis.incr(self.keys.version_counter))
        info = AdapterInfo(
            name=name,
            owner=owner,
            visibility=visibility or "private",
            rank=int(rank),
            alpha=float(alpha),
            targets=tuple(targets),
            size_bytes=len(weights_bytes),
            sha256=await asyncio.to_thread(_sha256, weights_bytes),
            created=time.time(),
            version=version,
            config_sha256=_sha256(config_bytes),
            chunk_size=self.chunk_size,
            chunks=-(-len(weights_bytes) // self.chunk_size),
        )
        blob = self.keys.blob(name, version)
        try:
            await self._stage(blob, config_bytes, weights_bytes)
            info, replaced = await self._commit(info, blob, replace, visibility is None)
        except BaseException:
            await asyncio.shield(self._discard(name, version))
            raise
        return Registered(info, replaced)

    async def _stage(self, blob: str, config: bytes, weights: bytes) -> None:
        view = memoryview(weights)
        cs, step = self.chunk_size, self.chunk_size * _CHUNKS_PER_ROUNDTRIP
        await self.redis.hset(blob, "config", config)
        await self.redis.expire(blob, self.staging_ttl_s)
        for start in range(0, len(view), step):
            end = min(start + step, len(view))
            chunks = {str(i // cs): view[i : min(i + cs, end)] for i in range(start, end, cs)}
            await self.redis.hset(blob, mapping=chunks)  # type: ignore[arg-type]

    async def _commit(
        self, info: AdapterInfo, blob: str, replace: bool, keep_visibility: bool
    ) -> tuple[AdapterInfo, AdapterInfo | None]:
        meta = self.keys.meta(info.name)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(meta, blob)
                    raw = await pipe.hgetall(meta)
                    old = AdapterInfo.from_redis(raw) if raw else None
                    if old is not None and old.version == info.version:
                        return old, None  # our EXEC went through before a connection drop
                    _check_takeover(old, info.owner, info.name, replace)
                    if not await pipe.exists(blob):
                        raise AdapterIntegrityError(
                            f"adapter {info.name!r}: staged upload expired before commit"
                        )
                    if keep_visibility and old is not None:
                        info = dataclasses.replace(info, visibility=old.visibility)
                    pipe.multi()
                    pipe.persist(blob)
                    pipe.delete(meta)
                    pipe.hset(meta, mapping=info.to_redis())
                    pipe.sadd(self.keys.index, info.name)
                    if old is not None and old.version != info.version:
                        pipe.unlink(self.keys.blob(old.name, old.version))
                    await pipe.execute()
                    return info, old
                except WatchError:
                    continue
        raise StoreUnavailableError(f"adapter {info.name!r}: too much contention, try again")

    async def _discard(self, name: str, version: int) -> None:
        """Drop a staged blob after a failure, unless the commit went through after all (e.g.
        cancelled while EXEC's reply was on its way).  Best effort: the staging TTL is the net."""
        with contextlib.suppress(Exception):
            live = await self.redis.hget(self.keys.meta(name), "version")
            if live is None or int(live) != version:
                await self.redis.unlink(self.keys.blob(name, version))

    @unavailable_as_typed
    async def delete_for(self, tenant: str, name: str) -> AdapterInfo:
        """Delete every key of ``name``; only its owner may.  Returns the deleted metadata."""
        if not NAME_PATTERN.match(name or ""):
            raise AdapterNotFoundError(f"adapter {name!r} not found")
        meta = self.keys.meta(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(meta)
                    raw = await pipe.hgetall(meta)
                    info = AdapterInfo.from_redis(raw) if raw else None
                    if info is None or not info.visible_to(tenant):
                        raise AdapterNotFoundError(f"adapter {name!r} not found")
                    if info.owner != tenant:
                        raise AdapterForbiddenError(
                            f"adapter {name!r} belongs to another tenant; only its owner can delete it"
                        )
                    pipe.multi()
                    pipe.unlink(meta, self.keys.blob(name, info.version))
                    pipe.srem(self.keys.index, name)
                    await pipe.execute()
                    return info
                except WatchError:
                    continue
        raise StoreUnavailableError(f"adapter {name!r}: too much contention, try again")


def _check_takeover(old: AdapterInfo | None, owner: str, name: str, replace: bool) -> None:
    if old is None:
        return
    if old.owner != owner:
        raise AdapterExistsError(f"adapter name {name!r} is already taken; choose another name")
    if not replace:
        raise AdapterExistsError(
            f"adapter {name!r} already exists; pass replace=true to replace it"
        )
