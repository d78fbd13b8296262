"""AdapterStore against a real redis-server: layout, chunking, checksums, atomicity, tenancy,
and persistence across a Redis restart (AOF)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterIntegrityError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.adapters.store import CHUNK_SIZE, AdapterStore
from loraplex.errors import AdapterError, AdapterNotFoundError
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import start_redis

from .conftest import keys_with

CONFIG = b'{"peft_type": "LORA", "r": 4}'
META = {"rank": 4, "alpha": 8.0, "targets": ("q_proj", "v_proj")}


async def test_register_list_get_fetch_delete(store: AdapterStore) -> None:
    weights = os.urandom(1000)
    reg = await store.register("one", "alice", CONFIG, weights, **META)
    assert reg.replaced is None
    info = reg.info
    assert (info.name, info.owner, info.visibility) == ("one", "alice", "private")
    assert (info.rank, info.alpha, info.targets) == (4, 8.0, ("q_proj", "v_proj"))
    assert info.size_bytes == 1000 and info.sha256 == hashlib.sha256(weights).hexdigest()
    assert info.version >= 1 and info.created > 0

    assert await store.get_for("alice", "one") == info
    assert [i.name for i in await store.list_for("alice")] == ["one"]
    assert await store.fetch_weights("alice/one") == (CONFIG, weights)

    deleted = await store.delete_for("alice", "one")
    assert deleted.version == info.version
    assert await store.get("alice/one") is None
    assert await store.list_for("alice") == []
    with pytest.raises(AdapterNotFoundError):
        await store.fetch_weights("alice/one")


async def test_blob_larger_than_a_chunk_is_chunked(store: AdapterStore) -> None:
    weights = os.urandom(2 * CHUNK_SIZE + 12345)
    info = (await store.register("big", "alice", CONFIG, weights, **META)).info
    assert info.chunks == 3 and info.chunk_size == CHUNK_SIZE
    blob = store.keys.blob("alice/big", info.version)
    assert await store.redis.hlen(blob) == 1 + 3  # config + 3 chunks
    assert len(await store.redis.hget(blob, "2")) == 12345
    assert await store.fetch_weights("alice/big") == (CONFIG, weights)


async def test_many_small_chunks_roundtrip(redis_url: str, prefix: str) -> None:
    store = AdapterStore.from_url(redis_url, prefix=prefix, chunk_size=1000)
    try:
        weights = os.urandom(50_500)  # 51 chunks: more than one HMGET round trip
        info = (await store.register("many", "alice", CONFIG, weights, **META)).info
        assert info.chunks == 51
        assert (await store.fetch("alice/many")).weights_bytes == weights
    finally:
        await store.close()


@pytest.mark.parametrize("field", ["1", "config"])
async def test_corruption_is_detected_on_read(store: AdapterStore, field: str) -> None:
    weights = os.urandom(CHUNK_SIZE + 10)
    info = (await store.register("c", "alice", CONFIG, weights, **META)).info
    blob = store.keys.blob("alice/c", info.version)
    data = bytearray(await store.redis.hget(blob, field))
    data[0] ^= 0xFF
    await store.redis.hset(blob, field, bytes(data))
    with pytest.raises(AdapterIntegrityError, match="sha256"):
        await store.fetch_weights("alice/c")


async def test_missing_chunk_is_an_integrity_error(store: AdapterStore) -> None:
    info = (await store.register("m", "alice", CONFIG, os.urandom(CHUNK_SIZE + 1), **META)).info
    await store.redis.hdel(store.keys.blob("alice/m", info.version), "1")
    with pytest.raises(AdapterIntegrityError, match="missing"):
        await store.fetch("alice/m")


async def test_failure_after_chunks_are_written_leaves_nothing(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged: dict[str, int] = {}

    async def boom(info, blob, *args):  # noqa: ANN001 - same signature as _commit
        staged["hlen"] = await store.redis.hlen(blob)
        staged["ttl"] = await store.redis.ttl(blob)
        assert await store.get("alice/half") is None  # not visible while staged
        raise RuntimeError("crash between staging and commit")

    monkeypatch.setattr(store, "_commit", boom)
    with pytest.raises(RuntimeError, match="crash"):
        await store.register("half", "alice", CONFIG, os.urandom(3 * CHUNK_SIZE), **META)
    assert staged["hlen"] == 4 and staged["ttl"] > 0  # chunks were there, with a staging TTL
    assert await store.get("alice/half") is None
    assert await store.list_for("alice") == []
    assert await keys_with(store) == {store.keys.version_counter("alice")}


async def test_failure_during_replace_keeps_old_version(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.urandom(5000)
    v1 = (await store.register("r", "alice", CONFIG, old, **META)).info

    async def boom(*args):  # noqa: ANN002
        raise ConnectionResetError("lost Redis before EXEC")

    monkeypatch.setattr(store, "_commit", boom)
    with pytest.raises(ConnectionResetError):
        await store.register("r", "alice", CONFIG, os.urandom(5000), **META, replace=True)
    assert await store.get("alice/r") == v1
    assert await store.fetch_weights("alice/r") == (CONFIG, old)
    assert await keys_with(store) == {
        store.keys.version_counter("alice"),
        store.keys.index,
        store.keys.owned("alice"),
        store.keys.meta("alice/r"),
        store.keys.blob("alice/r", v1.version),
    }


async def test_cancel_after_exec_keeps_the_committed_adapter(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = store._commit

    async def commit_then_cancel(*args):  # noqa: ANN002
        await real_commit(*args)
        raise asyncio.CancelledError  # e.g. shutdown while EXEC's reply was in flight

    monkeypatch.setattr(store, "_commit", commit_then_cancel)
    weights = os.urandom(CHUNK_SIZE + 1)
    with pytest.raises(asyncio.CancelledError):
        await store.register("kept", "alice", CONFIG, weights, **META)
    assert await store.fetch_weights("alice/kept") == (CONFIG, weights)


async def test_exists_and_replace(store: AdapterStore) -> None:
    v1 = (await store.register("x", "alice", CONFIG, b"one", **META)).info
    with pytest.raises(AdapterExistsError, match="replace=true"):
        await store.register("x", "alice", CONFIG, b"two", **META)
    # names are scoped to their owner: bob's "x" is another adapter
    bobs = (await store.register("x", "bob", CONFIG, b"bob", **META, replace=True)).info
    assert bobs.id == "bob/x" and bobs.version == v1.version == 1  # versions count per owner
    reg = await store.register("x", "alice", CONFIG, b"two", **META, replace=True)
    assert reg.replaced == v1 and reg.info.version > v1.version
    assert await store.fetch_weights("alice/x") == (CONFIG, b"two")
    assert await store.fetch_weights("bob/x") == (CONFIG, b"bob")
    assert reg.info.visibility == "private"
    # the old version's blob is gone right after the switch
    assert not await store.redis.exists(store.keys.blob("alice/x", v1.version))


async def test_replace_keeps_visibility_unless_given(store: AdapterStore) -> None:
    await store.register("vis", "alice", CONFIG, b"1", **META, visibility="public")
    kept = (await store.register("vis", "alice", CONFIG, b"2", **META, replace=True)).info
    assert kept.visibility == "public" and (await store.get("alice/vis")).visibility == "public"
    changed = await store.register(
        "vis", "alice", CONFIG, b"3", **META, replace=True, visibility="private"
    )
    assert changed.info.visibility == "private"


async def test_delete_removes_every_key(store: AdapterStore) -> None:
    for i, owner in enumerate(("alice", "alice", "bob")):
        await store.register(f"d{i}", owner, CONFIG, os.urandom(CHUNK_SIZE * 2 + 1), **META)
    await store.register("d0", "alice", CONFIG, os.urandom(100), **META, replace=True)
    # 2 owner counters and owned sets, the index, meta+blob each
    assert len(await keys_with(store)) == 2 * 2 + 1 + 3 * 2
    await store.delete_for("alice", "d0")
    await store.delete_for("alice", "d1")
    await store.delete_for("bob", "d2")
    # only the owners' version counters are left
    assert await keys_with(store) == {store.keys.version_counter(o) for o in ("alice", "bob")}


async def test_tenancy_hides_private_adapters(store: AdapterStore) -> None:
    await store.register("secret", "alice", CONFIG, b"w", **META)
    await store.register("shared", "alice", CONFIG, b"w", **META, visibility="public")
    await store.register("bobs", "bob", CONFIG, b"w", **META)

    assert [i.name for i in await store.list_for("alice")] == ["secret", "shared"]
    assert [i.name for i in await store.list_for("bob")] == ["bobs", "shared"]

    with pytest.raises(AdapterNotFoundError) as hidden:
        await store.get_for("bob", "secret")
    with pytest.raises(AdapterNotFoundError) as missing:
        await store.get_for("bob", "nosuch")
    assert str(hidden.value).replace("secret", "X") == str(missing.value).replace("nosuch", "X")
    assert (await store.get_for("bob", "shared")).owner == "alice"

    with pytest.raises(AdapterNotFoundError):
        await store.delete_for("bob", "secret")
    with pytest.raises(AdapterForbiddenError):
        await store.delete_for("bob", "shared")
    assert (
        await store.get("alice/secret") is not None and await store.get("alice/shared") is not None
    )
    # workers are trusted: fetch ignores tenancy
    assert await store.fetch_weights("alice/secret") == (CONFIG, b"w")


async def test_limits_and_names(redis_url: str, prefix: str) -> None:
    store = AdapterStore.from_url(redis_url, prefix=prefix, max_bytes=1000)
    try:
        with pytest.raises(AdapterTooLargeError):
            await store.register("big", "alice", CONFIG, os.urandom(1000), **META)
        with pytest.raises(AdapterError, match="invalid adapter name"):
            await store.register("no:colons", "alice", CONFIG, b"w", **META)
        with pytest.raises(AdapterError, match="visibility"):
            await store.register("v", "alice", CONFIG, b"w", **META, visibility="everyone")
        assert await store.get("../etc") is None
        assert await keys_with(store) == set()
    finally:
        await store.close()


async def test_weights_stream_from_a_file_or_chunks(store: AdapterStore, tmp_path: Path) -> None:
    """A file, an iterable and an async iterable of odd-sized pieces are staged chunk by chunk:
    the same blob, chunks and sha256 as the bytes."""
    weights = os.urandom(3 * CHUNK_SIZE + 777)
    path = tmp_path / "w.safetensors"
    path.write_bytes(weights)
    pieces = [weights[i : i + 100_003] for i in range(0, len(weights), 100_003)]

    async def async_pieces():  # type: ignore[no-untyped-def]
        for p in pieces:
            yield p

    with open(path, "rb") as f:
        sources = {"file": f, "iterable": iter(pieces), "async": async_pieces()}
        for name, source in sources.items():
            info = (await store.register(name, "alice", CONFIG, source, **META)).info
            assert (info.size_bytes, info.chunks) == (len(weights), 4)
            assert info.sha256 == hashlib.sha256(weights).hexdigest()
            assert (await store.fetch(f"alice/{name}")).weights_bytes == weights
            blob = store.keys.blob(f"alice/{name}", info.version)
            assert len(await store.redis.hget(blob, "3")) == 777


async def test_size_limit_while_streaming(redis_url: str, prefix: str) -> None:
    """Without a size known up front, the limit is enforced as chunks arrive; nothing is left."""
    store = AdapterStore.from_url(redis_url, prefix=prefix, max_bytes=2 * CHUNK_SIZE)
    try:
        endless = (b"\0" * CHUNK_SIZE for _ in range(100))
        with pytest.raises(AdapterTooLargeError, match="the limit is"):
            await store.register("big", "alice", CONFIG, endless, **META)
        assert await keys_with(store) == {store.keys.version_counter("alice")}
    finally:
        await store.close()


async def test_unreachable_redis_is_a_typed_error() -> None:
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", retry=Retry(NoBackoff(), 0), socket_connect_timeout=1
    )
    store = AdapterStore(client)
    try:
        with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
            await store.get("alice/x")
        assert await store.ping() is False
    finally:
        await store.close()


async def test_survives_redis_restart_with_aof(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis-aof"
    server = start_redis(data_dir)
    store = AdapterStore.from_url(server.url, prefix="restart")
    try:
        weights = os.urandom(CHUNK_SIZE + 777)
        info = (await store.register("durable", "alice", CONFIG, weights, **META)).info
        server.stop()  # SIGTERM: redis fsyncs the AOF on shutdown
        server = start_redis(data_dir, port=server.port)
        # the same client reconnects on its own (retry with backoff)
        got = await store.fetch("alice/durable")
        assert got.info == info and got.weights_bytes == weights and got.config_bytes == CONFIG
        assert await store.get_for("alice", "durable") == info
    finally:
        await store.close()
        server.stop()
