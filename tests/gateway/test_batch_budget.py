"""What a tenant's batches may hold (red team, 2026-12-08): a batch's answers count in the
tenant's file budget as they are stored, an answer past the budget or the per-line cap is that
line's own ``batch_output_too_large`` error (the batch still completes, no line lost), the
answers are dropped once written to the files; a tenant keeps at most ``batches_kept`` batches
(failed ones too), each a few KiB at most; a page of batches reads only that page.  Both stores:
the memory one and ``RedisBatchStore`` on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from loraplex.gateway.batches import run as batch_run
from loraplex.gateway.batches.errors import BatchLimitError, FilesQuotaError, ResultTooLargeError
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.gateway.batches.objects import TERMINAL, batch_object, file_object, new_file_id
from loraplex.gateway.batches.runner import BatchRunner
from loraplex.gateway.batches.store import BatchStore, MemoryBatchStore
from loraplex.gateway.batches.store_redis import RedisBatchStore
from loraplex.gateway.errors import InvalidParamError
from tests.gateway.conftest import FakeScheduler, Plan, openai_client
from tests.gateway.test_batches_api import chat_line, lines_of, start_batch, wait_done

ENDPOINT = "/v1/completions"
CHAT = "/v1/chat/completions"
StoreFactory = Callable[[BatchLimits], BatchStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    if request.param == "memory":
        yield MemoryBatchStore
        return
    r = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    prefix = f"t-budget-{uuid.uuid4().hex[:8]}"
    try:
        yield lambda limits: RedisBatchStore(r, limits, prefix)
    finally:
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def answer(
    tenant: str, endpoint: str, body: dict[str, Any], wanted: Callable[[], bool]
) -> tuple[int, dict[str, Any]]:
    """A line's answer of ``body["size"]`` characters (the executor, without a scheduler)."""
    return 200, {"object": "text_completion", "text": "x" * body["size"]}


async def upload(store: BatchStore, tenant: str, content: bytes) -> str:
    meta = file_object(new_file_id(), "in.jsonl", "batch", len(content), int(store.clock()), 3600)
    await store.put_file(tenant, meta, content, forced=False)
    return meta["id"]


async def finished(runner: BatchRunner, tenant: str, batch_id: str) -> dict[str, Any]:
    for _ in range(200):
        batch = await runner.get(tenant, batch_id)
        if batch["status"] in TERMINAL:
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch still {batch['status']}")


async def rows(store: BatchStore, tenant: str, file_id: str | None) -> list[dict[str, Any]]:
    content = await store.file_content(tenant, file_id) if file_id else b""
    return [json.loads(x) for x in (content or b"").splitlines()]


async def test_answers_count_in_the_budget_and_too_large_ones_are_their_lines_errors(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_run, "WATCH_S", 0.05)
    limits = BatchLimits(
        file_max_bytes=20_000, tenant_bytes=20_000, result_max_bytes=6000, concurrency=1
    )
    store = make_store(limits)
    sizes = [1000, 7000, 1000, 5000, 5000, 5000, 5000, 100]  # 7000: over the line's cap
    data = jsonl([line(f"r{i}", size=n) for i, n in enumerate(sizes)])
    runner = BatchRunner(store, answer, "gw-1")  # type: ignore[arg-type]
    try:
        batch = await runner.create(
            "alice", await upload(store, "alice", data), ENDPOINT, "24h", None
        )
        done = await finished(runner, "alice", batch["id"])
    finally:
        await runner.stop()
    assert done["status"] == "completed", done
    out = await rows(store, "alice", done["output_file_id"])
    errs = await rows(store, "alice", done["error_file_id"])
    assert sorted(r["custom_id"] for r in out + errs) == sorted(f"r{i}" for i in range(8))
    counts = done["request_counts"]
    assert (counts["total"], counts["completed"], counts["failed"]) == (8, len(out), len(errs))
    by_id = {r["custom_id"]: r["response"] for r in errs}
    assert by_id["r1"]["status_code"] == 413  # the line's cap
    refused = [i for i in range(8) if by_id.get(f"r{i}", {}).get("status_code") == 403]
    assert refused, by_id  # the budget: the later 5000s had no room left
    for r in errs:
        assert r["response"]["body"]["error"]["code"] == "batch_output_too_large", r
        assert set(r["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert sum(len(r["response"]["body"]["text"]) for r in out) <= limits.tenant_bytes
    # answers dropped once in the files: the budget holds the files, nothing else
    files = await store.list_files("alice")
    used = await store.usage("alice")
    assert used.bytes == sum(f["bytes"] for f in files) <= limits.tenant_bytes
    assert await store.answered("alice", batch["id"]) == {}
    if isinstance(store, RedisBatchStore):
        assert not await store.redis.exists(store._batch("alice", batch["id"]) + ":results")


async def test_a_cap_smaller_than_a_lines_error_still_ends_the_batch(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_run, "WATCH_S", 0.05)
    store = make_store(BatchLimits(result_max_bytes=50))  # smaller than the error line itself
    data = jsonl([line(f"r{i}", size=100) for i in range(3)])
    runner = BatchRunner(store, answer, "gw-1")  # type: ignore[arg-type]
    try:
        batch = await runner.create(
            "alice", await upload(store, "alice", data), ENDPOINT, "24h", None
        )
        done = await finished(runner, "alice", batch["id"])
    finally:
        await runner.stop()
    assert done["status"] == "completed" and done["request_counts"]["failed"] == 3, done
    errs = await rows(store, "alice", done["error_file_id"])
    assert [r["response"]["status_code"] for r in errs] == [413] * 3


async def test_answers_hold_the_budget_until_dropped(make_store: StoreFactory) -> None:
    store = make_store(BatchLimits(file_max_bytes=1000, tenant_bytes=3000))
    await upload(store, "alice", b"x" * 1000)
    await store.add_result("alice", "batch_" + "a" * 32, 0, True, {"t": "y" * 1500})
    assert (await store.usage("alice")).bytes > 2500
    with pytest.raises(FilesQuotaError):  # an upload sees the running batch's answers
        await upload(store, "alice", b"x" * 600)
    with pytest.raises(ResultTooLargeError) as e:
        await store.add_result("alice", "batch_" + "a" * 32, 1, True, {"t": "y" * 600})
    assert e.value.status == 403
    assert set(await store.answered("alice", "batch_" + "a" * 32)) == {0}  # nothing stored
    await store.add_result("alice", "batch_" + "a" * 32, 1, False, {"e": "z" * 600}, forced=True)
    assert (await store.usage("bob")).bytes == 0  # another tenant's budget is its own
    await store.drop_results("alice", "batch_" + "a" * 32)
    assert (await store.usage("alice")).bytes == 1000
    await upload(store, "alice", b"x" * 600)


async def test_forgotten_answers_leave_the_redis_budget(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    prefix = f"t-budget-{uuid.uuid4().hex[:8]}"
    store = RedisBatchStore(r, BatchLimits(), prefix)
    try:
        batch_id = "batch_" + "b" * 32
        await store.add_result("alice", batch_id, 0, True, {"t": "y" * 500})
        assert (await store.usage("alice")).bytes > 500
        await r.delete(store._batch("alice", batch_id) + ":results")  # what its expiry does
        assert (await store.usage("alice")).bytes == 0
    finally:
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def test_failed_batches_are_bounded_in_number_and_size(make_store: StoreFactory) -> None:
    store = make_store(BatchLimits(batches_kept=3))
    long_id = "c" * 512
    bad = jsonl([line(long_id, size=1) for _ in range(101)])  # 100 lines repeat a custom_id
    file_id = await upload(store, "alice", bad)
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}  # OpenAI's most
    runner = BatchRunner(store, answer, "gw-1")  # type: ignore[arg-type]
    for _ in range(3):
        batch = await runner.create("alice", file_id, ENDPOINT, "24h", metadata)
        assert batch["status"] == "failed" and batch["metadata"] == metadata
        assert len(json.dumps(batch)) < 16_000, len(json.dumps(batch))
        assert all(len(e["message"]) <= 200 for e in batch["errors"]["data"])
    with pytest.raises(BatchLimitError, match="keep"):
        await runner.create("alice", file_id, ENDPOINT, "24h", None)
    await upload(store, "bob", jsonl([line("a", size=1)]))  # bob keeps his own
    assert (await store.usage("alice")).batches == 3
    for bad_metadata in (
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {str(i): "v" for i in range(17)},
        {"k": 1},
    ):
        with pytest.raises(InvalidParamError):
            await runner.create("alice", file_id, ENDPOINT, "24h", bad_metadata)


async def test_a_page_of_batches_reads_that_page(make_store: StoreFactory) -> None:
    store = make_store(BatchLimits())
    now = int(store.clock())
    ids = [f"batch_{i:032x}" for i in range(5)]
    for i, batch_id in enumerate(ids):
        await store.put_batch(
            "alice", batch_object(batch_id, ENDPOINT, "file-x", "24h", None, now + i, now + 99)
        )
    runner = BatchRunner(store, answer, "gw-1")  # type: ignore[arg-type]
    first = await runner.list_page("alice", None, 2)
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = await runner.list_page("alice", first["last_id"], 10)
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    assert (await runner.list_page("alice", "batch_" + "f" * 32, 10))["data"] == []
    assert (await runner.list_page("bob", None, 10))["data"] == []


async def test_through_the_gateway_a_too_large_answer_is_its_lines_error_and_kept_batches_are_capped(
    gateway_factory, scheduler: FakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """The whole path (HTTP, routes, runner, Redis): a long answer is its line's 413 in the
    error file, the batch completes; the fourth batch kept (failed ones count) is a 429."""
    monkeypatch.setattr(batch_run, "WATCH_S", 0.05)
    scheduler.plan = lambda req: Plan(tokens=[5] * (300 if len(req.prompt_token_ids) > 30 else 3))
    limits = BatchLimits(result_max_bytes=700, batches_kept=3)
    async with gateway_factory(batches=limits) as url, openai_client(url) as client:
        rows = [chat_line("short", "hi"), chat_line("long", "tell me " * 40), chat_line("s2", "yo")]
        done = await wait_done(client, (await start_batch(client, rows, CHAT)).id)
        assert done.status == "completed", done
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        out, errs = (
            await lines_of(client, done.output_file_id),
            await lines_of(client, done.error_file_id),
        )
        assert [o["custom_id"] for o in out] == ["short", "s2"]
        (err,) = errs
        assert err["custom_id"] == "long" and err["response"]["status_code"] == 413
        assert err["response"]["body"]["error"]["code"] == "batch_output_too_large"
        bad = await client.files.create(file=("bad.jsonl", b"junk\n"), purpose="batch")
        for _ in range(2):
            failed = await client.batches.create(
                input_file_id=bad.id, endpoint=CHAT, completion_window="24h"
            )
            assert failed.status == "failed"
        with pytest.raises(openai.RateLimitError, match="keep"):
            await client.batches.create(
                input_file_id=bad.id, endpoint=CHAT, completion_window="24h"
            )
