"""Moves adapters stored before owner scoping to the scoped key layout (``adapters.keys``).

Before, an adapter's keys were ``{p}:adapter:{name}`` and ``{p}:adapter:{name}:v{n}`` and the index
held bare names, with one deployment-wide version counter; now they are keyed by the id
``owner/name`` and versions count per owner.  ``migrate_legacy`` renames each legacy adapter's keys
to its id (the owner is in its metadata), puts public ones in the public hash, swaps the index
entry and lifts the owner's counter to the old counter's value (so no version repeats), one
adapter per MULTI/EXEC.  It is idempotent and safe to run
from several processes at once; the adapter store (and a gateway with adapters) runs it in the
background at start-up, so a deployment upgrades in place.  When the new layout already has that
id (e.g. ``loraplex up`` re-registered its demo adapters first), the legacy copy is dropped.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import WatchError

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.adapters.info import AdapterInfo
from loraplex.adapters.keys import ID_SEPARATOR, adapter_id
from loraplex.adapters.redis_conn import unavailable_as_typed
from loraplex.adapters.store import AdapterStore

log = logging.getLogger(__name__)
_WATCH_RETRIES = 16


@unavailable_as_typed
async def migrate_legacy(store: AdapterStore) -> int:
    """Move every legacy adapter; returns how many moved."""
    members = [m.decode() for m in await store.redis.smembers(store.keys.index)]
    legacy = [m for m in members if ID_SEPARATOR not in m]
    if not legacy:
        return 0
    last_version = int(await store.redis.get(store.keys.legacy_version_counter) or 0)
    moved = 0
    for name in legacy:
        moved += await _move(store, name, last_version)
    return moved


async def _move(store: AdapterStore, name: str, last_version: int) -> bool:
    keys, redis = store.keys, store.redis
    old_meta = keys.meta(name)  # the legacy key: the bare name where the id now goes
    owner = await redis.hget(old_meta, "owner")
    if owner is None:  # moved by someone else, or deleted: only the index entry is left
        await redis.srem(keys.index, name)
        return False
    aid = adapter_id(owner.decode(), name)
    new_meta, counter = keys.meta(aid), keys.version_counter(owner.decode())
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_RETRIES):
            try:
                await pipe.watch(old_meta, new_meta, keys.public, counter)
                raw = await pipe.hgetall(old_meta)
                if not raw:
                    return False
                info = AdapterInfo.from_redis(raw)
                old_blob = keys.blob(name, info.version)
                blob_there = bool(await pipe.exists(old_blob))
                taken = bool(await pipe.exists(new_meta))
                holder = await pipe.hget(keys.public, name)
                behind = int(await pipe.get(counter) or 0) < last_version
                pipe.multi()
                if behind:
                    pipe.set(counter, last_version)
                if taken:  # registered again under the new layout: that one is newer
                    pipe.unlink(old_meta, old_blob)
                else:
                    pipe.rename(old_meta, new_meta)
                    if blob_there:  # a missing blob stays missing: fetches report it
                        pipe.rename(old_blob, keys.blob(aid, info.version))
                    pipe.sadd(keys.index, aid)
                    if info.public and holder is None:
                        pipe.hset(keys.public, name, aid)
                    elif info.public and holder.decode() != aid:  # the name went public since
                        pipe.hset(new_meta, "visibility", "private")
                pipe.srem(keys.index, name)
                await pipe.execute()
                return not taken
            except WatchError:
                continue
    raise StoreUnavailableError(f"adapter {name!r}: too much contention while migrating")


async def migrate_in_background(store: AdapterStore, retry_s: float = 2.0) -> None:
    """``migrate_legacy`` until it succeeds once (Redis may not be up yet); logs what moved."""
    while True:
        try:
            moved = await migrate_legacy(store)
        except StoreUnavailableError as e:
            log.warning("adapter key migration: %s; retrying in %gs", e, retry_s)
            await asyncio.sleep(retry_s)
            continue
        except Exception:  # never take the service down: the legacy adapters stay where they are
            log.exception("adapter key migration failed")
            return
        if moved:
            log.info("adapter key migration: moved %d adapter(s) to owner-scoped keys", moved)
        return
