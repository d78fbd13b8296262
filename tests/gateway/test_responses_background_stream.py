"""Streamed background responses (``background`` and ``stream``) through the official client: the
events come as they are made; a client that leaves does not stop the response; the stream resumes
from any sequence number on the same or another gateway replica (Redis), or on a gateway without
Redis (memory); a cancel ends every follower's stream with an error event.  Real Redis and NATS;
the fake scheduler plays the model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.servers import start_redis
from tests.gateway.conftest import (
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    GatewayFactory,
    openai_client,
)
from tests.gateway.test_responses_background import slow, until_status

PREFIX = f"bgs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096, redis_prefix=PREFIX) as url:
        yield url


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def test_streamed_as_made_and_kept(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    events = [
        e
        async for e in await oai.responses.create(
            model=MODEL_ID, input="Hi", background=True, stream=True
        )
    ]
    assert events[0].type == "response.created" and events[0].response.background is True
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert text_of(events) == REPLY_TEXT
    kept = await oai.responses.retrieve(events[0].response.id)
    assert kept.status == "completed" and kept.output_text == REPLY_TEXT
    # the whole stream again, from the log, after it ended
    again = [e async for e in await oai.responses.retrieve(kept.id, stream=True)]
    assert [e.sequence_number for e in again] == [e.sequence_number for e in events]


@pytest.mark.parametrize("where", ["same", "other", "memory"])
async def test_a_client_that_leaves_resumes_where_it_left(
    where: str,
    gateway_factory: GatewayFactory,
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
) -> None:
    slow(scheduler, tokenizer, delay_s=0.3)  # still generating when the client comes back
    redis = {"redis_url": ""} if where == "memory" else {"redis_prefix": PREFIX}
    async with gateway_factory(max_model_len=4096, **redis) as url, openai_client(url) as oai:
        seen = []
        stream = await oai.responses.create(
            model=MODEL_ID, input="Hi", background=True, stream=True
        )
        async for e in stream:
            seen.append(e)
            if text_of(seen):  # some text came: leave
                break
        await stream.close()
        rid, last = seen[0].response.id, seen[-1].sequence_number
        async with (
            gateway_factory(max_model_len=4096, redis_prefix=PREFIX) as other,
            openai_client(other if where == "other" else url) as again,
        ):
            rest = [
                e async for e in await again.responses.retrieve(
                    rid, stream=True, starting_after=last
                )
            ]  # fmt: skip
        assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed"
        assert rest[0].type == "response.output_text.delta"  # it came back mid-answer
        assert text_of([*seen, *rest]) == REPLY_TEXT  # nothing lost, nothing twice
        assert (await oai.responses.retrieve(rid)).status == "completed"


async def test_a_cancel_ends_the_followers_streams(
    gateway: str,
    gateway_factory: GatewayFactory,
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
) -> None:
    slow(scheduler, tokenizer, delay_s=0.2)
    async with openai_client(gateway) as oai, gateway_factory(redis_prefix=PREFIX) as other:
        stream = await oai.responses.create(
            model=MODEL_ID, input="Hi", background=True, stream=True
        )
        first = await stream.__anext__()
        async with openai_client(other) as by:
            follower = await by.responses.retrieve(first.response.id, stream=True)
            await by.responses.cancel(first.response.id)
            elsewhere = [e async for e in follower]
        here = [e async for e in stream]
        for events in (here, elsewhere):
            assert events[-1].type == "error" and "cancelled" in events[-1].message
        await until_status(oai, first.response.id, "cancelled")


async def test_only_streamed_background_responses_stream(
    gateway: str, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with openai_client(gateway) as oai:
        plain = await oai.responses.create(model=MODEL_ID, input="Hi")
        background = await oai.responses.create(model=MODEL_ID, input="Hi", background=True)
        for rid in (plain.id, background.id):
            with pytest.raises(openai.BadRequestError) as e:
                await oai.responses.retrieve(rid, stream=True)
            assert e.value.body["param"] == "stream"  # type: ignore[index]
        streamed = [
            e async for e in await oai.responses.create(
                model=MODEL_ID, input="Hi", background=True, stream=True
            )
        ]  # fmt: skip
        rid = streamed[0].response.id
    bob = AsyncOpenAI(base_url=f"{gateway}/v1", api_key="sk-bob-secret", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(rid, stream=True)  # another tenant's: not found
    await bob.close()


async def test_redis_lost_midway_ends_a_followers_stream_cleanly(
    gateway_factory: GatewayFactory,
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log a follower on another replica reads goes away: an error event ends its stream
    (no hang, no broken body); the generating gateway's own client still gets every event."""
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "0.3")
    redis = start_redis(tmp_path / "redis")
    try:
        slow(scheduler, tokenizer, delay_s=0.3)
        shared = {"redis_url": redis.url, "redis_prefix": PREFIX, "max_model_len": 4096}
        async with (
            gateway_factory(**shared) as here_url,
            gateway_factory(**shared) as there_url,
            openai_client(here_url) as here,
            openai_client(there_url) as there,
        ):
            stream = await here.responses.create(
                model=MODEL_ID, input="Hi", background=True, stream=True
            )
            first = await stream.__anext__()
            follower = await there.responses.retrieve(first.response.id, stream=True)
            assert (await follower.__anext__()).type == "response.created"
            redis.stop()
            rest = [e async for e in follower]
            assert rest[-1].type == "error" and "unavailable" in rest[-1].message
            mine = [first, *[e async for e in stream]]
            assert mine[-1].type == "response.completed" and text_of(mine) == REPLY_TEXT
    finally:
        redis.stop()
