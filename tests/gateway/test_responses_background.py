"""Background responses (``background: true``) through the official client: kept as in progress
at once, then completed (or failed) where any replica reads them; cancelled from the same or
another gateway (the compute is cancelled, the answer stays cancelled); refused without a store
; marked failed when the gateway stops.  Streamed ones: test_responses_background_stream.py.  Real Redis and NATS; the fake scheduler
plays the model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import (
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    GatewayFactory,
    Plan,
    openai_client,
)

PREFIX = f"bg-{uuid.uuid4().hex[:8]}"  # one Redis prefix: the replicas of a test share a store


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096, redis_prefix=PREFIX) as url:
        yield url


async def until_status(oai: AsyncOpenAI, rid: str, *wanted: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        r = await oai.responses.retrieve(rid)
        if r.status in wanted:
            return r
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} never reached {wanted}: {r.status}")


def slow(scheduler: FakeScheduler, tokenizer: Tokenizer, delay_s: float = 0.2) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.plan = lambda _: Plan(tokens=ids, chunk=1, delay_s=delay_s)


async def test_kept_in_progress_then_completed(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    r = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
    assert r.status in ("queued", "in_progress") and r.background is True and r.store is True
    done = await until_status(oai, r.id, "completed")
    assert done.output_text == REPLY_TEXT and done.usage.output_tokens > 0
    # a background answer continues a conversation like any kept one
    scheduler.says("Fine.", chunk=2)
    nxt = await oai.responses.create(model=MODEL_ID, input="More", previous_response_id=r.id)
    assert nxt.output_text == "Fine."


async def test_a_failure_is_kept_as_failed(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    scheduler.says(REPLY_TEXT, chunk=2, finish=None, error=(503, "no worker could serve it"))
    r = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
    failed = await until_status(oai, r.id, "failed")
    assert failed.error is not None and "no worker" in failed.error.message


async def test_cancel_here_and_from_another_replica(
    gateway: str,
    gateway_factory: GatewayFactory,
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
) -> None:
    slow(scheduler, tokenizer)
    async with openai_client(gateway) as oai, gateway_factory(redis_prefix=PREFIX) as other:
        for canceller in (gateway, other):
            r = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
            request_id = scheduler.submits[-1].request_id
            with pytest.raises(openai.BadRequestError, match="still in progress"):
                await oai.responses.create(model=MODEL_ID, input="x", previous_response_id=r.id)
            async with openai_client(canceller) as by:
                cancelled = await by.responses.cancel(r.id)
            assert cancelled.status == "cancelled"
            await scheduler.wait_cancel(request_id)  # the compute stops
            await asyncio.sleep(0.5)  # the generating task ended; it did not overwrite
            assert (await oai.responses.retrieve(r.id)).status == "cancelled"
            again = await oai.responses.cancel(r.id)  # idempotent
            assert again.status == "cancelled"
        scheduler.says(REPLY_TEXT, chunk=2)
        done = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
        await until_status(oai, done.id, "completed")
        assert (await oai.responses.cancel(done.id)).status == "completed"  # nothing to cancel
        plain = await oai.responses.create(model=MODEL_ID, input="Hi")
        with pytest.raises(openai.BadRequestError):
            await oai.responses.cancel(plain.id)
        with pytest.raises(openai.NotFoundError):
            await oai.responses.cancel("resp_" + "0" * 32)


@pytest.mark.parametrize(("extra", "param"), [({"store": False}, "background")])
async def test_what_is_refused(
    oai: AsyncOpenAI, scheduler: FakeScheduler, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await oai.responses.create(
            model=MODEL_ID,
            input="Hi",
            background=True,
            **extra,  # type: ignore[arg-type]
        )
    assert e.value.body["param"] == param  # type: ignore[index]
    assert scheduler.submits == []


async def test_a_gateway_that_keeps_nothing_refuses_background(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    async with gateway_factory(responses_ttl_s=0) as url, openai_client(url) as oai:
        with pytest.raises(openai.BadRequestError):
            await oai.responses.create(model=MODEL_ID, input="Hi", background=True)


async def test_a_stopping_gateway_marks_its_background_answers_failed(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    slow(scheduler, tokenizer, delay_s=1.0)
    async with gateway_factory(redis_prefix=PREFIX) as url, openai_client(url) as oai:
        r = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
    async with gateway_factory(redis_prefix=PREFIX) as other, openai_client(other) as oai:
        got = await oai.responses.retrieve(r.id)
    assert got.status == "failed" and "stopped" in got.error.message
