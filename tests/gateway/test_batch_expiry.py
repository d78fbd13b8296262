"""How long batch files live: ``expires_after`` on an upload and a batch's
``output_expires_after`` (OpenAI's ``{anchor: "created_at", seconds: N}``, 1 hour to 30 days),
cut to the store's own TTL; a bad policy is a 400 naming it; an expired file is gone for its
tenant and leaves the tenant's file budget (memory store and real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from loraplex.gateway.batches.errors import FilesQuotaError
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.gateway.batches.objects import file_object, new_file_id
from loraplex.gateway.batches.store import MemoryBatchStore
from loraplex.gateway.batches.store_redis import RedisBatchStore
from tests.gateway.conftest import ALICE, FakeScheduler, openai_client
from tests.gateway.test_batches_api import (
    answer_by_prompt,
    chat_line,
    jsonl,
    start_batch,
    wait_done,
)

WEEK = 7 * 24 * 3600


@pytest.fixture(params=["redis", "memory"])
async def oai(request: pytest.FixtureRequest, gateway_factory) -> AsyncIterator[AsyncOpenAI]:  # noqa: ANN001
    redis = {} if request.param == "redis" else {"redis_url": ""}
    async with gateway_factory(**redis) as url, openai_client(url) as client:
        client.url = url  # type: ignore[attr-defined]
        yield client


async def test_an_upload_and_a_batchs_outputs_live_as_asked(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    answer_by_prompt(scheduler)
    policy = {"anchor": "created_at", "seconds": 3600}
    f = await oai.files.create(
        file=("in.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch", expires_after=policy
    )
    assert f.expires_at == f.created_at + 3600
    assert (await oai.files.retrieve(f.id)).expires_at == f.created_at + 3600
    longest = {"anchor": "created_at", "seconds": 30 * 24 * 3600}  # more than the store keeps
    g = await oai.files.create(file=("b.jsonl", b"{}\n"), purpose="batch", expires_after=longest)
    assert g.expires_at == g.created_at + WEEK
    plain = await oai.files.create(file=("c.jsonl", b"{}\n"), purpose="batch")
    assert plain.expires_at == plain.created_at + WEEK

    batch = await oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )  # fmt: skip
    done = await wait_done(oai, batch.id)
    out = await oai.files.retrieve(done.output_file_id)
    assert out.expires_at == out.created_at + 7200
    default = await wait_done(
        oai, (await start_batch(oai, [chat_line("b", "x")], "/v1/chat/completions")).id
    )
    out = await oai.files.retrieve(default.output_file_id)
    assert out.expires_at == out.created_at + WEEK


BAD_POLICIES = [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "-3600"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1e9"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "9" * 40}, "expires_after.seconds"),
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
]  # fmt: skip


async def test_a_bad_policy_is_a_400_naming_it(gateway_factory, scheduler) -> None:  # noqa: ANN001
    async with gateway_factory() as url, httpx.AsyncClient(base_url=url) as http:
        for fields, param in BAD_POLICIES:
            r = await http.post(
                "/v1/files", files={"file": ("f.jsonl", b"{}\n")},
                data={"purpose": "batch", **fields}, headers=ALICE,
            )  # fmt: skip
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (fields, r.text)
        ok = await http.post(
            "/v1/files", files={"file": ("f.jsonl", jsonl([chat_line("a", "hi")]))},
            data={"purpose": "batch"}, headers=ALICE,
        )  # fmt: skip
        for policy, param in (
            ({"anchor": "created_at", "seconds": 10}, "output_expires_after.seconds"),
            ({"anchor": "created_at", "seconds": True}, "output_expires_after.seconds"),
            ({"anchor": "created_at", "seconds": 3600.5}, "output_expires_after.seconds"),
            ({"anchor": "now", "seconds": 3600}, "output_expires_after.anchor"),
            ({"anchor": "created_at", "seconds": 3600, "x": 1}, "output_expires_after"),
            ("soon", "output_expires_after"),
        ):
            r = await http.post(
                "/v1/batches", headers=ALICE,
                json={"input_file_id": ok.json()["id"], "endpoint": "/v1/chat/completions",
                      "completion_window": "24h", "output_expires_after": policy},
            )  # fmt: skip
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (policy, r.text)


def _meta(now: float, life_s: int) -> dict:
    return file_object(new_file_id(), "f.jsonl", "batch", 10, int(now), life_s)


async def test_an_expired_file_is_gone_and_frees_the_budget_in_memory() -> None:
    clock = [1_000_000.0]
    store = MemoryBatchStore(BatchLimits(files_per_tenant=2), clock=lambda: clock[0])
    short, long = _meta(clock[0], 3600), _meta(clock[0], WEEK)
    await store.put_file("alice", short, b"x" * 10, forced=False)
    await store.put_file("alice", long, b"x" * 10, forced=False)
    with pytest.raises(FilesQuotaError):
        await store.put_file("alice", _meta(clock[0], WEEK), b"x" * 10, forced=False)
    clock[0] += 3600
    assert await store.get_file("alice", short["id"]) is None
    assert await store.file_content("alice", short["id"]) is None
    assert [m["id"] for m in await store.list_files("alice")] == [long["id"]]
    await store.put_file("alice", _meta(clock[0], WEEK), b"x" * 10, forced=False)  # room again


async def test_an_expired_file_leaves_the_budget_in_redis(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    prefix = f"t-exp-{uuid.uuid4().hex[:8]}"
    store = RedisBatchStore(r, BatchLimits(files_per_tenant=2), prefix)
    try:
        short = _meta(store.clock(), 3600)
        await store.put_file("alice", short, b"x" * 10, forced=False)
        assert 3590 <= await r.ttl(store._file("alice", short["id"])) <= 3600  # its own life
        long = _meta(store.clock(), WEEK)
        await store.put_file("alice", long, b"x" * 10, forced=False)
        with pytest.raises(FilesQuotaError):
            await store.put_file("alice", _meta(store.clock(), WEEK), b"x" * 10, forced=False)
        await r.delete(store._file("alice", short["id"]))  # what its expiry does, an hour early
        assert await store.get_file("alice", short["id"]) is None
        await store.put_file("alice", _meta(store.clock(), WEEK), b"x" * 10, forced=False)
        assert len(await store.list_files("alice")) == 2
    finally:
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
