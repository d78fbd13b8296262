"""``AdapterStore``: adapter metadata and weight blobs in Redis (layout: ``adapters.keys``).

Registration is atomic: the blob is staged under a fresh version key (with a TTL), then one
MULTI/EXEC, guarded by WATCH on the metadata key, makes it permanent, writes the metadata that
points at it and (on replace) unlinks the previous version.  Readers never see a half-written
adapter.  Every fetch verifies sha256.

Tenancy: names are scoped to their owner (ids ``owner/name``, see ``adapters.keys``).  A tenant
resolves a name to its own adapter, else to the public adapter of that name; nothing it is told
depends on other tenants' private adapters.  ``get`` and ``fetch`` take ids and are for trusted
callers (workers); ``get_for``, ``list_for`` and ``delete_for`` take the tenant's bare names.

Over 300 lines on purpose: every read and write of an adapter's keys is in this one class, so the
atomicity argument above (staging, WATCH, MULTI/EXEC) can be checked in one file.
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

from loraplex.adapters.chunks import Weights, batches, known_size
from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterIntegrityError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.adapters.info import AdapterInfo, FetchedAdapter, Registered, check_visibility
from loraplex.adapters.keys import DEFAULT_PREFIX, ID_PATTERN, StoreKeys, adapter_id
from loraplex.adapters.quota import AdapterQuota
from loraplex.adapters.redis_conn import connect_redis, unavailable_as_typed
from loraplex.errors import AdapterNotFoundError
from loraplex.lora.names import NAME_PATTERN, validate_name
from loraplex.timeouts import wait_for

CHUNK_SIZE = 512 * 1024
STAGING_TTL_S = 3600  # a staged blob whose upload died disappears after this
_CHUNKS_PER_ROUNDTRIP = 16
# staging holds about two of these in memory (asyncio joins the buffers of one write)
_STAGE_BYTES_PER_ROUNDTRIP = 2 * 1024 * 1024
_WATCH_RETRIES = 64


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_into(sha: hashlib._Hash, chunks: list[memoryview]) -> None:
    for chunk in chunks:
        sha.update(chunk)


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
            return bool(await wait_for(self.redis.ping(), timeout_s))
        except Exception:
            return False

    # ---- reads ---------------------------------------------------------------------------
    @unavailable_as_typed
    async def get(self, aid: str) -> AdapterInfo | None:
        """Metadata of the adapter with id ``aid`` (``owner/name``), regardless of tenancy
        (trusted callers), or None."""
        if not ID_PATTERN.match(aid or ""):
            return None
        raw = await self.redis.hgetall(self.keys.meta(aid))
        return AdapterInfo.from_redis(raw) if raw else None

    @unavailable_as_typed
    async def get_for(self, tenant: str, name: str) -> AdapterInfo:
        """``name`` as ``tenant`` resolves it: its own adapter, else the public one of that name."""
        if NAME_PATTERN.match(name or ""):
            info = await self.get(adapter_id(tenant, name))
            if info is not None:
                return info
            aid = await self._public_holder(self.redis, name)
            info = await self.get(aid) if aid is not None else None
            if info is not None and info.public and info.name == name:
                return info
        raise AdapterNotFoundError(f"adapter {name!r} not found")

    @unavailable_as_typed
    async def list_for(self, tenant: str) -> list[AdapterInfo]:
        """What ``tenant`` resolves (its own adapters, then public ones whose name it does not
        use itself), sorted by name."""
        own = adapter_id(tenant, "")
        ids = [i.decode() for i in await self.redis.smembers(self.keys.index)]
        mine = [i for i in ids if i.startswith(own)]
        names = {i[len(own) :] for i in mine}
        public = await self.redis.hgetall(self.keys.public)
        ids = mine + [aid.decode() for n, aid in public.items() if n.decode() not in names]
        async with self.redis.pipeline(transaction=False) as pipe:
            for aid in ids:
                pipe.hgetall(self.keys.meta(aid))
            rows = await pipe.execute()
        infos = (AdapterInfo.from_redis(raw) for raw in rows if raw)
        visible = [i for i in infos if i.owner == tenant or (i.public and i.name not in names)]
        return sorted(visible, key=lambda i: i.name)

    async def fetch_weights(self, aid: str) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors) of the live version, sha-verified."""
        got = await self.fetch(aid)
        return got.config_bytes, got.weights_bytes

    @unavailable_as_typed
    async def fetch(self, aid: str) -> FetchedAdapter:
        """The live version of adapter id ``aid`` with its metadata; raises AdapterIntegrityError
        on a sha mismatch."""
        name = aid.partition("/")[2] or aid  # errors reach the tenant: its name, not the id
        for _ in range(3):  # a concurrent replace unlinks the version being read: read again
            info = await self.get(aid)
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
        blob = self.keys.blob(info.id, info.version)
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
    async def check_can_register(
        self, owner: str, name: str, replace: bool, visibility: str | None = None
    ) -> None:
        """Cheap pre-check (before validation work): raises AdapterExistsError if ``owner``
        already has ``name`` (without ``replace``) or it would clash with a public name."""
        aid = adapter_id(owner, validate_name(name))
        old = await self.get(aid)
        _check_takeover(old, aid, replace, visibility, await self._public_holder(self.redis, name))

    async def _public_holder(self, redis: aioredis.Redis, name: str) -> str | None:
        """The id of the public adapter named ``name`` (``redis`` may be a watching pipeline)."""
        aid = await redis.hget(self.keys.public, name)
        return aid.decode() if aid is not None else None

    @unavailable_as_typed
    async def register(
        self,
        name: str,
        owner: str,
        config_bytes: bytes,
        weights: Weights,
        *,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        visibility: str | None = None,
        replace: bool = False,
        source: str = "",
        quota: AdapterQuota | None = None,
    ) -> Registered:
        """Store a (validated) adapter; on ``replace`` the owner's previous version is removed.
        The new version is served (even if the previous one was unloaded); ``source``: the path
        it was read from, as the owner gave it (``AdapterInfo.source``).
        ``visibility=None``: private for a new adapter, the previous version's on replace.
        ``weights``: bytes, a binary file or an iterable of byte strings, staged into Redis a
        batch of chunks at a time (sha256 and size computed on the way).  ``quota``: the owner's
        limits, checked in the commit (``AdapterQuotaError``); None: not counted."""
        validate_name(name)
        if visibility is not None:
            check_visibility(visibility)
        size = known_size(weights)
        if size is not None:
            self._check_size(name, len(config_bytes) + size)
        aid = adapter_id(owner, name)
        holder = await self._public_holder(self.redis, name)
        _check_takeover(await self.get(aid), aid, replace, visibility, holder)
        version = int(await self.redis.incr(self.keys.version_counter(owner)))
        info = AdapterInfo(
            name=name,
            owner=owner,
            visibility=visibility or "private",
            rank=int(rank),
            alpha=float(alpha),
            targets=tuple(targets),
            size_bytes=0,  # size, sha256 and chunks: once staged
            sha256="",
            created=time.time(),
            version=version,
            config_sha256=_sha256(config_bytes),
            chunk_size=self.chunk_size,
            chunks=0,
            source=source,
        )
        blob = self.keys.blob(aid, version)
        try:
            info = await self._stage(info, blob, config_bytes, weights)
            info, replaced = await self._commit(info, blob, replace, visibility is None, quota)
        except BaseException:
            await asyncio.shield(self._discard(aid, version))
            raise
        return Registered(info, replaced)

    async def _stage(
        self, info: AdapterInfo, blob: str, config: bytes, weights: Weights
    ) -> AdapterInfo:
        """Write the blob (config, then the weights a batch of chunks per round trip); returns
        ``info`` with the weights' size, sha256 and chunk count."""
        await self.redis.hset(blob, "config", config)
        await self.redis.expire(blob, self.staging_ttl_s)
        sha, size, index = hashlib.sha256(), 0, 0
        async for batch in batches(weights, self.chunk_size, _STAGE_BYTES_PER_ROUNDTRIP):
            size += sum(len(c) for c in batch)
            self._check_size(info.name, len(config) + size)
            await asyncio.to_thread(_hash_into, sha, batch)
            fields = {str(index + i): c for i, c in enumerate(batch)}
            await self.redis.hset(blob, mapping=fields)  # type: ignore[arg-type]
            index += len(batch)
        return dataclasses.replace(info, size_bytes=size, sha256=sha.hexdigest(), chunks=index)

    def _check_size(self, name: str, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise AdapterTooLargeError(
                f"adapter {name!r} is at least {size} bytes; the limit is {self.max_bytes} bytes"
            )

    async def _commit(
        self,
        info: AdapterInfo,
        blob: str,
        replace: bool,
        keep_visibility: bool,
        quota: AdapterQuota | None,
    ) -> tuple[AdapterInfo, AdapterInfo | None]:
        meta, owned_key = self.keys.meta(info.id), self.keys.owned(info.owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    # the owned set: two commits of one owner cannot both pass its quota
                    await pipe.watch(meta, blob, self.keys.public)
                    if quota is not None:  # only a counted commit waits for its owner's others
                        await pipe.watch(owned_key)
                    raw = await pipe.hgetall(meta)
                    old = AdapterInfo.from_redis(raw) if raw else None
                    if old is not None and old.version == info.version:
                        return old, None  # our EXEC went through before a connection drop
                    holder = await self._public_holder(pipe, info.name)
                    wanted = None if keep_visibility else info.visibility
                    _check_takeover(old, info.id, replace, wanted, holder)
                    if not await pipe.exists(blob):  # gone with a Redis restart, or its TTL
                        raise StoreUnavailableError(
                            f"adapter {info.name!r}: the staged upload was lost before it was "
                            "stored (the store restarted?); send it again"
                        )
                    if keep_visibility and old is not None:
                        info = dataclasses.replace(info, visibility=old.visibility)
                    sizes = await self._owned_sizes(pipe, info.owner, watch=quota is not None)
                    if quota is not None:
                        others = (n for aid, n in sizes.items() if aid != info.id and n is not None)
                        quota.check(info.name, info.size_bytes, others)
                    pipe.multi()
                    pipe.persist(blob)
                    pipe.delete(meta)
                    pipe.hset(meta, mapping=info.to_redis())
                    pipe.sadd(self.keys.index, info.id)
                    pipe.sadd(owned_key, info.id, *(a for a, n in sizes.items() if n is not None))
                    if gone := [a for a, n in sizes.items() if n is None]:
                        pipe.srem(owned_key, *gone)
                    if info.public:
                        pipe.hset(self.keys.public, info.name, info.id)
                    elif holder == info.id:  # made private
                        pipe.hdel(self.keys.public, info.name)
                    if old is not None and old.version != info.version:
                        pipe.unlink(self.keys.blob(old.id, old.version))
                    await pipe.execute()
                    return info, old
                except WatchError:
                    continue
        raise StoreUnavailableError(f"adapter {info.name!r}: too much contention, try again")

    async def _owned_sizes(
        self, pipe: aioredis.client.Pipeline, owner: str, watch: bool
    ) -> dict[str, int | None]:
        """The owner's committed adapters: id -> weights size, None for an id whose metadata is
        gone (dropped from the set by the commit); their keys join ``pipe``'s WATCH.  Before the
        owner's first commit since the owned sets exist, its ids come from the index."""
        ids = [i.decode() for i in await pipe.smembers(self.keys.owned(owner))]
        if not ids:
            mine = adapter_id(owner, "")
            ids = [
                a
                for i in await pipe.smembers(self.keys.index)
                if (a := i.decode()).startswith(mine)
            ]
        if ids and watch:  # a replacement elsewhere changes a size without touching the set
            await pipe.watch(*(self.keys.meta(aid) for aid in ids))
        async with self.redis.pipeline(transaction=False) as reads:
            for aid in ids:
                reads.hget(self.keys.meta(aid), "size_bytes")
            raw = await reads.execute()
        return {aid: int(r) if r is not None else None for aid, r in zip(ids, raw, strict=True)}

    async def _discard(self, aid: str, version: int) -> None:
        """Drop a staged blob after a failure, unless the commit went through after all (e.g.
        cancelled while EXEC's reply was on its way).  Best effort: the staging TTL is the net."""
        with contextlib.suppress(Exception):
            live = await self.redis.hget(self.keys.meta(aid), "version")
            if live is None or int(live) != version:
                await self.redis.unlink(self.keys.blob(aid, version))

    @unavailable_as_typed
    async def set_served(self, aid: str, served: bool) -> AdapterInfo | None:
        """Serve adapter id ``aid`` or stop serving it (vLLM's load / unload: the weights stay).
        Returns its metadata before the change, None if there is no such adapter (trusted
        callers: ids; ``Registrar`` checks ownership)."""
        meta = self.keys.meta(aid)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(meta)
                    raw = await pipe.hgetall(meta)
                    if not raw:
                        return None
                    pipe.multi()
                    pipe.hset(meta, "served", "1" if served else "0")
                    await pipe.execute()
                    return AdapterInfo.from_redis(raw)
                except WatchError:
                    continue
        raise StoreUnavailableError(f"adapter {aid!r}: too much contention, try again")

    @unavailable_as_typed
    async def delete_for(self, tenant: str, name: str) -> AdapterInfo:
        """Delete every key of ``tenant``'s adapter ``name``.  A public adapter of that name owned
        by someone else is 403; anything else is 404.  Returns the deleted metadata."""
        if not NAME_PATTERN.match(name or ""):
            raise AdapterNotFoundError(f"adapter {name!r} not found")
        aid = adapter_id(tenant, name)
        meta = self.keys.meta(aid)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(meta, self.keys.public)
                    raw = await pipe.hgetall(meta)
                    holder = await self._public_holder(pipe, name)
                    if not raw:
                        if holder is not None:  # visible to the caller, but not its own
                            raise AdapterForbiddenError(
                                f"adapter {name!r} belongs to another tenant; only its owner can delete it"
                            )
                        raise AdapterNotFoundError(f"adapter {name!r} not found")
                    info = AdapterInfo.from_redis(raw)
                    pipe.multi()
                    pipe.unlink(meta, self.keys.blob(aid, info.version))
                    pipe.srem(self.keys.index, aid)
                    pipe.srem(self.keys.owned(tenant), aid)
                    if holder == aid:
                        pipe.hdel(self.keys.public, name)
                    await pipe.execute()
                    return info
                except WatchError:
                    continue
        raise StoreUnavailableError(f"adapter {name!r}: too much contention, try again")


def _check_takeover(
    old: AdapterInfo | None, aid: str, replace: bool, visibility: str | None, holder: str | None
) -> None:
    """Whether the owner of ``aid`` may store it: ``old`` is its own live version, ``holder`` the
    id of the public adapter of that name.  Only the caller's own adapters and public names are
    consulted, so the answer never depends on another tenant's private adapters."""
    name = aid.partition("/")[2]
    if old is not None and not replace:
        raise AdapterExistsError(
            f"adapter {name!r} already exists; pass replace=true to replace it"
        )
    public = (visibility or (old.visibility if old is not None else "private")) == "public"
    if public and holder not in (None, aid):
        raise AdapterExistsError(
            f"a public adapter named {name!r} already exists; public names are unique: "
            "choose another name, or keep yours private"
        )
