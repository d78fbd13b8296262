"""Adapter names are scoped to their owner (``AdapterStore`` on a real redis-server): two tenants'
adapters of one name never meet, what a tenant is told never depends on another tenant's private
adapters, public names resolve as documented, and the keys of the unscoped layout migrate."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from loraplex.adapters.errors import AdapterExistsError, AdapterForbiddenError
from loraplex.adapters.info import AdapterInfo
from loraplex.adapters.migrate import migrate_legacy
from loraplex.adapters.store import AdapterStore
from loraplex.errors import AdapterNotFoundError

from .conftest import keys_with

CONFIG = b'{"peft_type": "LORA", "r": 4}'
META = {"rank": 4, "alpha": 8.0, "targets": ("q_proj", "v_proj")}


async def test_two_owners_one_name(store: AdapterStore) -> None:
    a = (await store.register("secret-a", "alice", CONFIG, b"alice's", **META)).info
    b = (await store.register("secret-a", "bob", CONFIG, b"bob's", **META)).info
    assert (a.id, b.id) == ("alice/secret-a", "bob/secret-a") and a.sha256 != b.sha256
    assert await store.get_for("alice", "secret-a") == a
    assert await store.get_for("bob", "secret-a") == b
    assert await store.fetch_weights(a.id) == (CONFIG, b"alice's")
    assert await store.fetch_weights(b.id) == (CONFIG, b"bob's")
    assert await store.list_for("alice") == [a] and await store.list_for("bob") == [b]
    assert (await store.delete_for("bob", "secret-a")).id == b.id
    assert await store.get_for("alice", "secret-a") == a
    with pytest.raises(AdapterNotFoundError):
        await store.get_for("bob", "secret-a")


async def _outcome(call: Awaitable[Any]) -> object:
    """What a caller learns from one call: its result without timestamps, or its error."""
    try:
        got = await call
    except Exception as e:
        return (type(e).__name__, str(e))
    if isinstance(got, AdapterInfo):
        return dataclasses.replace(got, created=0.0)
    if isinstance(got, list):
        return [dataclasses.replace(i, created=0.0) for i in got]
    return dataclasses.replace(got.info, created=0.0) if hasattr(got, "info") else got


async def _bobs_view(store: AdapterStore) -> list[object]:
    """Everything bob can do with the name ``secret-a``, in order."""

    def reg(weights: bytes, **kw: Any) -> Awaitable[Any]:
        return store.register("secret-a", "bob", CONFIG, weights, **META, **kw)

    steps: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get_for("bob", "secret-a"),
        lambda: store.delete_for("bob", "secret-a"),
        lambda: store.list_for("bob"),
        lambda: store.check_can_register("bob", "secret-a", False),
        lambda: store.check_can_register("bob", "secret-a", True, "public"),
        lambda: reg(b"b1"),
        lambda: reg(b"b2"),
        lambda: reg(b"b3", replace=True),
        lambda: store.get_for("bob", "secret-a"),
        lambda: store.list_for("bob"),
        lambda: reg(b"b4", replace=True, visibility="public"),
        lambda: store.get_for("carol", "secret-a"),
        lambda: store.delete_for("carol", "secret-a"),
        lambda: reg(b"b5", replace=True, visibility="private"),
        lambda: store.get_for("carol", "secret-a"),
        lambda: store.delete_for("bob", "secret-a"),
        lambda: store.delete_for("bob", "secret-a"),
        lambda: store.list_for("bob"),
    ]
    return [await _outcome(step()) for step in steps]


async def test_no_answer_depends_on_another_tenants_private_adapter(redis_url: str) -> None:
    views = []
    for alice_has_it in (True, False):
        store = AdapterStore.from_url(redis_url, prefix=f"scope-{uuid.uuid4().hex[:10]}")
        try:
            if alice_has_it:
                await store.register("secret-a", "alice", CONFIG, b"a", **META)
                await store.register("secret-a", "alice", CONFIG, b"a2", **META, replace=True)
            views.append(await _bobs_view(store))
        finally:
            await store.close()
    with_a, without_a = views
    assert with_a == without_a
    # and bob really created, replaced, published and deleted his own adapter
    assert with_a[5].id == "bob/secret-a" and with_a[10].visibility == "public"
    assert with_a[11].owner == "bob" and with_a[12][0] == "AdapterForbiddenError"


async def test_public_names_resolve_after_own_names(store: AdapterStore) -> None:
    pub = (await store.register("shared", "alice", CONFIG, b"p", **META, visibility="public")).info
    assert await store.get_for("bob", "shared") == pub
    assert await store.list_for("bob") == [pub]
    with pytest.raises(AdapterForbiddenError):
        await store.delete_for("bob", "shared")
    # bob's own "shared" shadows the public one for bob only
    own = (await store.register("shared", "bob", CONFIG, b"o", **META)).info
    assert await store.get_for("bob", "shared") == own and await store.list_for("bob") == [own]
    assert await store.get_for("carol", "shared") == pub
    # public names are unique among public adapters (a public fact, so no oracle)
    with pytest.raises(AdapterExistsError, match="a public adapter named 'shared' already exists"):
        await store.check_can_register("bob", "shared", True, "public")
    with pytest.raises(AdapterExistsError, match="a public adapter named 'shared' already exists"):
        await store.register("shared", "bob", CONFIG, b"o2", **META, replace=True, visibility="public")  # fmt: skip
    await store.delete_for("bob", "shared")
    assert await store.get_for("bob", "shared") == pub
    # made private, the name is free for public use again and hidden from others
    await store.register("shared", "alice", CONFIG, b"p2", **META, replace=True, visibility="private")  # fmt: skip
    with pytest.raises(AdapterNotFoundError):
        await store.get_for("bob", "shared")
    assert await store.redis.hlen(store.keys.public) == 0
    bobs = await store.register("shared", "bob", CONFIG, b"o3", **META, visibility="public")
    assert await store.get_for("carol", "shared") == bobs.info
    await store.delete_for("bob", "shared")
    assert await store.redis.hlen(store.keys.public) == 0


def _legacy_info(name: str, owner: str, visibility: str, version: int, weights: bytes) -> dict:
    import hashlib

    info = AdapterInfo(
        name=name, owner=owner, visibility=visibility, rank=4, alpha=8.0, targets=("q_proj",),
        size_bytes=len(weights), sha256=hashlib.sha256(weights).hexdigest(), created=1.0,
        version=version, config_sha256=hashlib.sha256(CONFIG).hexdigest(), chunk_size=1 << 20,
        chunks=1,
    )  # fmt: skip
    return info.to_redis()


async def test_legacy_layout_migrates(store: AdapterStore) -> None:
    p, r = store.keys.prefix, store.redis
    legacy = {"old-priv": ("alice", "private", 3), "old-pub": ("bob", "public", 5)}
    for name, (owner, vis, version) in legacy.items():
        await r.hset(f"{p}:adapter:{name}", mapping=_legacy_info(name, owner, vis, version, name.encode()))  # fmt: skip
        await r.hset(f"{p}:adapter:{name}:v{version}", mapping={"config": CONFIG, "0": name.encode()})  # fmt: skip
        await r.sadd(f"{p}:adapters", name)
    await r.set(f"{p}:adapters:version", 7)

    assert await migrate_legacy(store) == 2
    assert await migrate_legacy(store) == 0  # idempotent
    assert await store.fetch_weights("alice/old-priv") == (CONFIG, b"old-priv")
    assert await store.fetch_weights("bob/old-pub") == (CONFIG, b"old-pub")
    assert (await store.get_for("carol", "old-pub")).id == "bob/old-pub"
    with pytest.raises(AdapterNotFoundError):
        await store.get_for("carol", "old-priv")
    assert await keys_with(store) == {
        f"{p}:adapters", f"{p}:adapters:public", f"{p}:adapters:version",
        f"{p}:adapter:alice/old-priv", f"{p}:adapter:alice/old-priv:v3",
        f"{p}:adapter:bob/old-pub", f"{p}:adapter:bob/old-pub:v5",
        f"{p}:adapters:version:alice", f"{p}:adapters:version:bob",
    }  # fmt: skip
    # no version repeats: the owners' counters continue after the old deployment-wide one
    again = await store.register("old-priv", "alice", CONFIG, b"new", **META, replace=True)
    assert again.replaced is not None and again.info.version == 8


async def test_migration_keeps_a_newer_registration(store: AdapterStore) -> None:
    p, r = store.keys.prefix, store.redis
    await r.hset(f"{p}:adapter:demo", mapping=_legacy_info("demo", "default", "public", 1, b"old"))
    await r.hset(f"{p}:adapter:demo:v1", mapping={"config": CONFIG, "0": b"old"})
    await r.sadd(f"{p}:adapters", "demo")
    new = await store.register("demo", "default", CONFIG, b"new", **META, visibility="public")
    assert await migrate_legacy(store) == 0
    assert await store.get_for("bob", "demo") == new.info
    assert await store.fetch_weights("default/demo") == (CONFIG, b"new")
    assert not await r.exists(f"{p}:adapter:demo", f"{p}:adapter:demo:v1")
    assert await r.smembers(f"{p}:adapters") == {b"default/demo"}
