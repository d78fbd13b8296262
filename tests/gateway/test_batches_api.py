"""OpenAI's Files and Batch APIs on the gateway, driven by the official ``openai`` client over a
real uvicorn server, real nats-server and redis-server (or the memory store), with the fake
scheduler standing in for the workers: results in order, per-line errors, a refused input file,
cancel, a full queue, tenant isolation, limits, and a batch taken over when its gateway stops."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from loraplex.gateway.batches import runner as batch_runner
from loraplex.gateway.batches.limits import BatchLimits
from loraplex.protocol import SubmitRequest
from loraplex.tooling.ports import free_port
from tests.gateway.conftest import ALICE, BOB, MODEL_ID, FakeScheduler, Plan, openai_client

BOB_KEY = "sk-bob-secret"


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def wait_done(client: AsyncOpenAI, batch_id: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not done within {timeout}s: {batch.status}")


async def lines_of(client: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def start_batch(client: AsyncOpenAI, rows: list[dict[str, Any]], endpoint: str) -> Any:
    f = await client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    return await client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,
        completion_window="24h",  # type: ignore[arg-type]
    )


@pytest.fixture(params=["redis", "memory"])
async def oai(
    request: pytest.FixtureRequest, gateway_factory, scheduler
) -> AsyncIterator[AsyncOpenAI]:  # noqa: ANN001
    redis = {} if request.param == "redis" else {"redis_url": ""}
    async with gateway_factory(**redis) as url, openai_client(url) as client:
        client.url = url  # type: ignore[attr-defined]
        yield client


def answer_by_prompt(scheduler: FakeScheduler) -> None:
    """Each request's answer depends on its prompt: lines tell apart."""
    scheduler.plan = lambda req: Plan(tokens=echo(scheduler, req))


def echo(scheduler: FakeScheduler, req: SubmitRequest) -> list[int]:
    """`` echo N``: N sums the prompt's tokens."""
    return scheduler.tokenizer.encode(
        f" echo {sum(req.prompt_token_ids)}", add_special_tokens=False
    )


async def test_a_batch_answers_every_line_in_order(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    answer_by_prompt(scheduler)
    rows = [chat_line(f"req-{i}", f"question number {i}", max_tokens=8) for i in range(6)]
    rows.insert(3, chat_line("bad", "x", temperature=-5))  # refused by validation: a 400 line
    batch = await start_batch(oai, rows, "/v1/chat/completions")
    assert batch.status == "in_progress" and batch.request_counts.total == 7
    done = await wait_done(oai, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 1)
    out = await lines_of(oai, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(6)]
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["response"]["body"]["object"] == "chat.completion"
    texts = [o["response"]["body"]["choices"][0]["message"]["content"] for o in out]
    assert len(set(texts)) == 6  # each line got its own prompt's answer
    (err,) = await lines_of(oai, done.error_file_id)
    assert err["custom_id"] == "bad" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "temperature"
    assert {s.tenant for s in scheduler.submits} == {"alice"}  # queued as the batch's tenant
    assert len(scheduler.submits) == 6
    # the output files are the tenant's own, listed with the input
    purposes = sorted(f.purpose for f in (await oai.files.list()).data)
    assert purposes == ["batch", "batch_output", "batch_output"]
    assert [b.id for b in (await oai.batches.list()).data] == [batch.id]


async def test_completions_endpoint(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    answer_by_prompt(scheduler)
    rows = [{"custom_id": "c", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL_ID, "prompt": ["one two", "three four"], "max_tokens": 4}}]  # fmt: skip
    done = await wait_done(oai, (await start_batch(oai, rows, "/v1/completions")).id)
    (out,) = await lines_of(oai, done.output_file_id)
    assert out["response"]["body"]["object"] == "text_completion"
    assert len(out["response"]["body"]["choices"]) == 2


async def test_responses_endpoint_keeps_answers_a_later_line_can_continue(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    answer_by_prompt(scheduler)

    def line(custom_id: str, **body: Any) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
                "body": {"model": MODEL_ID, "max_output_tokens": 6, **body}}  # fmt: skip

    rows = [line("r", input="name a colour"), line("bg", input="x", background=True)]
    done = await wait_done(oai, (await start_batch(oai, rows, "/v1/responses")).id)
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    (out,) = await lines_of(oai, done.output_file_id)
    body = out["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    (message,) = [item for item in body["output"] if item["type"] == "message"]
    assert message["content"][0]["text"].strip().startswith("echo ")
    kept = await oai.responses.retrieve(body["id"])  # kept, as the route keeps it
    assert kept.id == body["id"] and kept.status == "completed"
    (err,) = await lines_of(oai, done.error_file_id)
    assert err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "background"
    # a second batch continues the kept answer: its prompt holds the first conversation
    first_prompt = scheduler.submits[-1].prompt_token_ids
    again = [line("next", input="and another", previous_response_id=body["id"])]
    done = await wait_done(oai, (await start_batch(oai, again, "/v1/responses")).id)
    (out,) = await lines_of(oai, done.output_file_id)
    assert out["response"]["body"]["previous_response_id"] == body["id"]
    assert len(scheduler.submits[-1].prompt_token_ids) > len(first_prompt)


async def test_a_bad_input_file_fails_the_batch_naming_the_lines(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    rows: list[Any] = [
        chat_line("a", "fine"),
        chat_line("a", "the same custom_id"),
        {**chat_line("b", "x"), "url": "/v1/completions"},
        chat_line("c", "x", stream=True),
        {**chat_line("d", "x"), "method": "GET"},
    ]
    raw = jsonl(rows) + b"{not json\n" + b'"a string"\n' + b'{"custom_id": "\\ud800", "x": 1}\n'
    f = await oai.files.create(file=("in.jsonl", raw), purpose="batch")
    batch = await oai.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at is not None
    errors = {e.line: e for e in batch.errors.data}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    assert "used twice" in errors[2].message and errors[3].param == "url"
    assert errors[4].param == "body.stream" and "not valid JSON" in errors[6].message
    assert scheduler.submits == []


async def test_cancel_ends_with_what_was_answered(
    oai: AsyncOpenAI, scheduler: FakeScheduler, monkeypatch
) -> None:  # noqa: ANN001
    slow = {"n": 0}

    def plan(req: SubmitRequest) -> Plan:
        slow["n"] += 1  # the first two answer at once, the rest take long
        return Plan(tokens=[5] * 40, delay_s=0.0 if slow["n"] <= 2 else 0.25, chunk=1)

    scheduler.plan = plan
    rows = [chat_line(f"r{i}", "hi", max_tokens=40) for i in range(40)]
    batch = await start_batch(oai, rows, "/v1/chat/completions")
    for _ in range(100):
        if (await oai.batches.retrieve(batch.id)).request_counts.completed >= 2:
            break
        await asyncio.sleep(0.1)
    cancelling = await oai.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = await wait_done(oai, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out, errs = await lines_of(oai, done.output_file_id), await lines_of(oai, done.error_file_id)
    assert len(out) >= 2 and len(out) + len(errs) == 40  # every line accounted for
    assert {e["error"]["code"] for e in errs} == {"batch_cancelled"}
    assert len(scheduler.submits) < 40  # no new request once cancelled
    running = {s.request_id for s in scheduler.submits[2:]} - {
        o["response"]["request_id"] for o in out
    }
    await asyncio.sleep(0.3)
    assert running & {c.request_id for c in scheduler.cancels}  # in-flight ones cancelled
    with pytest.raises(openai.BadRequestError, match="cancelled already"):
        await oai.batches.cancel(batch.id)


async def test_a_full_queue_is_waited_out_not_failed(
    oai: AsyncOpenAI, scheduler: FakeScheduler, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.setattr("loraplex.gateway.batches.run.RETRY_S", 0.05)
    refused = {"n": 0}

    def plan(req: SubmitRequest) -> Plan:
        refused["n"] += 1
        if refused["n"] <= 4:
            return Plan(code=429, message="queue full")
        return Plan(tokens=[7, 7])

    scheduler.plan = plan
    done = await wait_done(
        oai, (await start_batch(oai, [chat_line("q", "hi")], "/v1/chat/completions")).id
    )
    assert done.status == "completed" and done.request_counts.completed == 1
    assert refused["n"] == 5


async def test_tenants_never_see_each_others_files_or_batches(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    answer_by_prompt(scheduler)
    batch = await start_batch(oai, [chat_line("a", "hi")], "/v1/chat/completions")
    async with openai_client(oai.url) as bob:  # type: ignore[attr-defined]
        bob.api_key = BOB_KEY
        for call in (
            bob.batches.retrieve(batch.id), bob.batches.cancel(batch.id),
            bob.files.retrieve(batch.input_file_id), bob.files.content(batch.input_file_id),
            bob.files.delete(batch.input_file_id),
            bob.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"),
        ):  # fmt: skip
            with pytest.raises(openai.NotFoundError) as e:
                await call
            assert "alice" not in str(e.value)
        assert (await bob.files.list()).data == [] and (await bob.batches.list()).data == []
    done = await wait_done(oai, batch.id)
    assert done.status == "completed"


async def test_limits_and_hostile_values(gateway_factory, scheduler: FakeScheduler) -> None:  # noqa: ANN001
    limits = BatchLimits(
        file_max_bytes=2000, tenant_bytes=5000, files_per_tenant=3, active_per_tenant=1
    )
    scheduler.plan = lambda _: Plan(tokens=[5] * 50, delay_s=0.2, chunk=1)
    async with gateway_factory(batches=limits) as url, httpx.AsyncClient(base_url=url) as http:
        small = jsonl([chat_line("a", "hi")])

        def up(data, **kw):
            return http.post(
                "/v1/files",
                files={"file": ("f.jsonl", data)},
                data={"purpose": "batch", **kw},
                headers=ALICE,
            )

        assert (await up(b"x" * 2001)).status_code == 413
        for name in (b"a\x00b", b"\xff\xfe", b"x\x1b[31m"):  # the name is echoed back: clean it is
            raw = (b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                   b'--XX\r\nContent-Disposition: form-data; name="file"; filename="' + name +
                   b'"\r\n\r\n{}\r\n--XX--\r\n')  # fmt: skip
            r = await http.post(
                "/v1/files",
                content=raw,
                headers={**ALICE, "content-type": "multipart/form-data; boundary=XX"},
            )
            assert (
                r.status_code in (200, 400)
                and r.json()["error" if r.status_code == 400 else "object"]
            ), r.text
            if r.status_code == 200:
                assert r.json()["filename"].isprintable()
                await http.delete(f"/v1/files/{r.json()['id']}", headers=ALICE)
        r = await up(small, purpose="fine-tune")
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        ids = [(await up(small)).json()["id"] for _ in range(3)]
        r = await up(small)
        assert r.status_code == 403 and r.json()["error"]["code"] == "files_quota_exceeded"

        def create(**kw):
            return http.post(
                "/v1/batches",
                json={
                    "input_file_id": ids[0],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    **kw,
                },
                headers=ALICE,
            )

        for bad, param in (
            ({"endpoint": "/v1/embeddings"}, "endpoint"),
            ({"completion_window": "1h"}, "completion_window"),
            ({"metadata": {"k": "v" * 513}}, "metadata"),
            ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
            ({"input_file_id": "file-" + "0" * 32}, "input_file_id"),
        ):
            r = await create(**bad)
            assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
        assert (await create(extra_field=1)).status_code == 400
        assert (await create()).status_code == 200
        r = await create()
        assert r.status_code == 429 and r.json()["error"]["code"] == "batch_limit_exceeded"
        assert (
            await http.post(
                "/v1/batches",
                json={"input_file_id": ids[1], "endpoint": "/v1/chat/completions"},
                headers=BOB,
            )
        ).status_code == 404
        for path in (
            "/v1/batches/" + "x" * 5000,
            "/v1/files/%00",
            "/v1/files/file-" + "A" * 32,
            "/v1/batches/batch_../x",
        ):
            r = await http.get(path, headers=ALICE)
            assert r.status_code == 404 and len(r.text) < 400, r.text
        for q in ("limit=0", "limit=101", "limit=abc", "after=" + "z" * 3000):
            r = await http.get(f"/v1/batches?{q}", headers=ALICE)
            assert r.status_code in (200, 400), r.text
        r = await http.post(
            "/v1/batches",
            content=b"\xff\xfe{",
            headers={**ALICE, "content-type": "application/json"},
        )
        assert r.status_code == 400


async def test_a_batch_whose_gateway_stops_is_taken_over(
    gateway_factory, scheduler: FakeScheduler, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.setattr(batch_runner, "LEASE_S", 1.0)
    monkeypatch.setattr(batch_runner, "SWEEP_S", 0.2)
    scheduler.plan = lambda req: Plan(tokens=echo(scheduler, req), delay_s=0.1, chunk=1)
    rows = [chat_line(f"t{i}", f"number {i}", max_tokens=4) for i in range(30)]
    prefix = "batch-takeover"
    metrics_port = free_port()
    async with (
        gateway_factory(redis_prefix=prefix, metrics_port=metrics_port) as url_b,
        openai_client(url_b) as b,
    ):
        async with gateway_factory(redis_prefix=prefix) as url_a, openai_client(url_a) as a:
            batch = await start_batch(a, rows, "/v1/chat/completions")
            for _ in range(100):
                if (await a.batches.retrieve(batch.id)).request_counts.completed >= 3:
                    break
                await asyncio.sleep(0.05)
        # gateway a is gone mid-batch; b (same Redis) goes on with it
        done = await wait_done(b, batch.id, timeout=30)
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        taken = re.search(r"^loraplex_gateway_batches_taken_over_total (\S+)$", scraped, re.M)
        assert taken and float(taken.group(1)) >= 1, scraped  # more when a slow a lost it early
        completed = re.search(r'batch_requests_total\{outcome="completed"\} (\S+)', scraped)
        assert completed and 0 < float(completed.group(1)) <= 30, scraped
    assert done.status == "completed", done

    async with gateway_factory(redis_prefix=prefix) as url_c, openai_client(url_c) as c:
        out = await lines_of(c, done.output_file_id)
        assert await lines_of(c, done.error_file_id) == []
    assert [o["custom_id"] for o in out] == [f"t{i}" for i in range(30)]
    assert done.request_counts.completed == 30


async def test_loraplex_run_batch_writes_vllms_output_file(
    gateway_factory, scheduler: FakeScheduler, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """``loraplex run-batch -i -o`` (vLLM's run-batch) through the gateway's Batch API."""
    from loraplex.tooling.cli import main

    answer_by_prompt(scheduler)
    monkeypatch.setattr("loraplex.gateway.batches.run.WATCH_S", 0.05)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bob-secret")
    rows = [chat_line(f"id-{i}", f"n {i}", max_tokens=4) for i in range(5)]
    rows.insert(2, chat_line("bad", "x", top_p=7))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(jsonl(rows))
    async with gateway_factory() as url:
        argv = ["run-batch", "-i", str(src), "-o", str(out), "--url", url, "--poll", "0.1"]
        assert await asyncio.to_thread(main, argv) == 0
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert [g["custom_id"] for g in got] == [r["custom_id"] for r in rows]  # input order
        assert [g["response"]["status_code"] for g in got] == [200, 200, 400, 200, 200, 200]
        assert {s.tenant for s in scheduler.submits} == {"bob"}  # the key's tenant
        src.write_bytes(jsonl([{**rows[0], "url": "/v1/completions"}, rows[1]]))
        assert await asyncio.to_thread(main, argv) == 1  # refused: the urls differ


async def test_an_answer_the_store_lost_is_run_again_not_dropped(
    gateway_factory, scheduler: FakeScheduler, monkeypatch
) -> None:  # noqa: ANN001
    """The store fails to keep one answer: the run stops (it never ends without that line) and,
    its lease lapsed, is taken up again; every line ends answered."""
    from loraplex.gateway.batches.errors import BatchStoreUnavailableError
    from loraplex.gateway.batches.store import MemoryBatchStore

    monkeypatch.setattr(batch_runner, "LEASE_S", 0.6)
    monkeypatch.setattr(batch_runner, "SWEEP_S", 0.2)
    answer_by_prompt(scheduler)
    keep, failed = MemoryBatchStore.add_result, []

    async def flaky(self, tenant, batch_id, index, ok, line):  # noqa: ANN001, ANN202
        if not failed:
            failed.append(index)
            raise BatchStoreUnavailableError("the store is away")
        return await keep(self, tenant, batch_id, index, ok, line)

    monkeypatch.setattr(MemoryBatchStore, "add_result", flaky)
    async with gateway_factory(redis_url="") as url, openai_client(url) as client:
        rows = [chat_line(f"s{i}", f"n {i}", max_tokens=4) for i in range(4)]
        done = await wait_done(client, (await start_batch(client, rows, "/v1/chat/completions")).id)
        assert done.status == "completed" and done.request_counts.completed == 4, done
        out = await lines_of(client, done.output_file_id)
        assert [o["custom_id"] for o in out] == [f"s{i}" for i in range(4)]
    assert failed
