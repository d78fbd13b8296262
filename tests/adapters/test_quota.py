"""Per-tenant adapter quotas: the pure check, the store's commit on a real redis-server (count,
bytes, replacement, concurrent commits, data from before the owned sets), the tenants file's own
limits, and the adapter-store's 403 over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from loraplex.adapters.errors import AdapterQuotaError
from loraplex.adapters.quota import MIB, AdapterQuota
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.store import AdapterStore
from loraplex.tenants import Tenant, TenantsConfigError, parse_tenants

from .conftest import ALICE, BOB, keys_with
from .test_service import assert_error, upload

CONFIG = b'{"peft_type": "LORA", "r": 4}'
META = {"rank": 4, "alpha": 8.0, "targets": ("q_proj", "v_proj")}


# ---- the check ---------------------------------------------------------------------------
def test_check_counts_and_bytes() -> None:
    quota = AdapterQuota(max_adapters=2, max_bytes=100)
    quota.check("a", 50, [])
    quota.check("b", 50, [50])
    with pytest.raises(AdapterQuotaError, match="already have 2 adapters, the most .* is 2"):
        quota.check("c", 1, [10, 10])
    with pytest.raises(AdapterQuotaError, match="would take"):
        quota.check("b", 51, [50])
    AdapterQuota().check("x", 10**15, [10**15] * 10_000)  # unlimited


def test_flag_units_and_zero_means_unlimited() -> None:
    assert AdapterQuota.of(3, 1.5) == AdapterQuota(3, int(1.5 * MIB))
    assert AdapterQuota.of(0, 0) == AdapterQuota(None, None)
    assert AdapterQuota.of(0, 0).unlimited and not AdapterQuota.of(1, 0).unlimited


def test_a_tenants_own_limits_replace_the_deployments() -> None:
    registrar = Registrar(None, None, 8, None, quota=AdapterQuota(10, 1000))  # type: ignore[arg-type]
    assert registrar.quota_of(Tenant("a", "k")) == AdapterQuota(10, 1000)
    assert registrar.quota_of(Tenant("a", "k", max_adapters=2)) == AdapterQuota(2, 1000)
    own = Tenant("a", "k", max_adapters=0, max_adapter_storage_mb=1.0)
    assert registrar.quota_of(own) == AdapterQuota(None, MIB)


def test_tenants_file_fields() -> None:
    entry = {"name": "a", "api_key": "k", "max_adapters": 3, "max_adapter_storage_mb": 64}
    t = parse_tenants({"tenants": [entry]}).tenants[0]
    assert (t.max_adapters, t.max_adapter_storage_mb) == (3, 64.0)
    for bad in (
        {"max_adapters": -1},
        {"max_adapters": 1.5},
        {"max_adapters": True},
        {"max_adapters": "3"},
        {"max_adapter_storage_mb": -1},
        {"max_adapter_storage_mb": float("inf")},
        {"max_adapter_storage_mb": float("nan")},
        {"max_adapter_storage_mb": "64"},
    ):
        with pytest.raises(TenantsConfigError, match=next(iter(bad))):
            parse_tenants({"tenants": [{"name": "a", "api_key": "k", **bad}]})


# ---- the store (real redis-server) -------------------------------------------------------
async def put(store: AdapterStore, name: str, owner: str, size: int, quota: AdapterQuota, **kw):
    return await store.register(name, owner, CONFIG, os.urandom(size), quota=quota, **META, **kw)


async def test_count_limit_is_per_owner_and_freed_by_delete(store: AdapterStore) -> None:
    quota = AdapterQuota(max_adapters=2)
    await put(store, "a", "alice", 10, quota)
    await put(store, "b", "alice", 10, quota)
    with pytest.raises(AdapterQuotaError, match="already have 2 adapters"):
        await put(store, "c", "alice", 10, quota)
    assert await store.get("alice/c") is None
    await put(store, "c", "bob", 10, quota)  # bob's count is his own
    await store.delete_for("alice", "a")
    await put(store, "c", "alice", 10, quota)
    assert sorted(i.name for i in await store.list_for("alice")) == ["b", "c"]
    # nothing staged is left behind by the refusal
    assert not [k for k in await keys_with(store) if k.endswith(":v3")]


async def test_bytes_limit_and_replacement_counted_once(store: AdapterStore) -> None:
    quota = AdapterQuota(max_adapters=2, max_bytes=1000)
    await put(store, "a", "alice", 400, quota)
    await put(store, "b", "alice", 400, quota)
    # at the count limit, a replacement is no new adapter; 400 -> 600 fits in 1000
    reg = await put(store, "a", "alice", 600, quota, replace=True)
    assert reg.replaced is not None and reg.info.size_bytes == 600
    with pytest.raises(AdapterQuotaError, match="would take"):
        await put(store, "a", "alice", 601, quota, replace=True)
    assert (await store.get("alice/a")).size_bytes == 600  # the live version is untouched


async def test_concurrent_commits_cannot_pass_the_quota_together(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both commits read the owner's usage before either writes (a barrier forces the race);
    the WATCH makes the second one read again, and refuse."""
    quota = AdapterQuota(max_adapters=2)
    await put(store, "a", "alice", 100, quota)
    arrived, both = 0, asyncio.Event()
    read_usage = store._owned_sizes

    async def racing(pipe, owner, watch):  # noqa: ANN001, ANN202
        nonlocal arrived
        sizes = await read_usage(pipe, owner, watch)
        arrived += 1
        if arrived <= 2:  # the first read of each; a retry goes straight on
            if arrived == 2:
                both.set()
            await both.wait()
        return sizes

    monkeypatch.setattr(store, "_owned_sizes", racing)
    results = await asyncio.gather(
        put(store, "b", "alice", 100, quota), put(store, "c", "alice", 100, quota),
        return_exceptions=True,
    )  # fmt: skip
    assert arrived == 3, results  # two first reads and one retry
    assert sum(isinstance(r, AdapterQuotaError) for r in results) == 1, results
    assert len(await store.list_for("alice")) == 2


async def test_many_concurrent_uploads_stop_at_the_quota(store: AdapterStore) -> None:
    quota = AdapterQuota(max_adapters=3)
    results = await asyncio.gather(
        *(put(store, f"n{i}", "alice", 100, quota) for i in range(8)), return_exceptions=True
    )
    assert sum(isinstance(r, AdapterQuotaError) for r in results) == 5, results
    assert len(await store.list_for("alice")) == 3


async def test_a_concurrent_replacement_elsewhere_is_seen(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growing adapter ``a`` while ``b`` commits: the size ``b``'s check read is stale, so its
    commit reads again (each metadata key is watched)."""
    quota = AdapterQuota(max_bytes=1000)
    await put(store, "a", "alice", 100, quota)
    read_usage, grown = store._owned_sizes, False

    async def grow_a_meanwhile(pipe, owner, watch):  # noqa: ANN001, ANN202
        nonlocal grown
        sizes = await read_usage(pipe, owner, watch)
        if not grown:
            grown = True
            monkeypatch.setattr(store, "_owned_sizes", read_usage)
            await put(store, "a", "alice", 700, quota, replace=True)
            monkeypatch.setattr(store, "_owned_sizes", grow_a_meanwhile)
        return sizes

    monkeypatch.setattr(store, "_owned_sizes", grow_a_meanwhile)
    with pytest.raises(AdapterQuotaError, match="would take"):
        await put(store, "b", "alice", 400, quota)


async def test_adapters_stored_before_the_owned_sets_count(store: AdapterStore) -> None:
    unlimited = AdapterQuota()
    for name in ("a", "b"):
        await put(store, name, "alice", 10, unlimited)
    await store.redis.delete(store.keys.owned("alice"))  # as an older release left them
    with pytest.raises(AdapterQuotaError):
        await put(store, "c", "alice", 10, AdapterQuota(max_adapters=2))
    await put(store, "c", "alice", 10, AdapterQuota(max_adapters=3))
    owned = {m.decode() for m in await store.redis.smembers(store.keys.owned("alice"))}
    assert owned == {"alice/a", "alice/b", "alice/c"}


async def test_an_id_whose_metadata_is_gone_is_not_counted(store: AdapterStore) -> None:
    await put(store, "a", "alice", 10, AdapterQuota())
    await store.redis.sadd(store.keys.owned("alice"), "alice/ghost")
    await put(store, "b", "alice", 10, AdapterQuota(max_adapters=2))
    owned = {m.decode() for m in await store.redis.smembers(store.keys.owned("alice"))}
    assert owned == {"alice/a", "alice/b"}


# ---- over HTTP: the adapter-store's answer ------------------------------------------------
async def test_upload_past_the_quota_is_a_403(service, make_adapter, tmp_path: Path) -> None:
    tenants = tmp_path / "quota-tenants.json"
    tenants.write_text(json.dumps({"tenants": [
        {"name": "alice", "api_key": "sk-alice-secret"},
        {"name": "bob", "api_key": "sk-bob-secret", "max_adapters": 0},
    ]}))  # fmt: skip
    path = make_adapter("q")
    async with (
        service(tenants_file=str(tenants), max_adapters_per_tenant=1) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert (await upload(http, "one", path)).status_code == 201
        resp = await upload(http, "two", path)
        assert_error(resp, 403, "the most one tenant may keep is 1")
        assert resp.json()["error"]["code"] == "adapter_quota_exceeded"
        assert "bob" not in resp.text
        replaced = await upload(http, "one", path, replace="true")
        assert replaced.status_code == 200, replaced.text
        for name in ("one", "two"):  # bob's own entry lifts the limit
            assert (await upload(http, name, path, headers=BOB)).status_code == 201
        assert (await http.delete("/v1/adapters/one", headers=ALICE)).status_code == 200
        assert (await upload(http, "two", path)).status_code == 201
