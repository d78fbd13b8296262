"""Kept responses through the official ``openai`` client: ``previous_response_id`` continues a
conversation (also after a stream, and through a function call), ``retrieve``, ``input_items``
(paged), ``delete``; no tenant reaches another's; ``store: false``, the size and count limits,
a gateway that keeps nothing, and a store that is down.  Redis is real; the fake scheduler plays
the model and records the prompts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import (
    ALICE,
    BOB,
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    GatewayFactory,
    openai_client,
)
from tests.gateway.test_responses_api import FUNCTION

RESPONSES = "/v1/responses"
UNKNOWN = "resp_" + "ab" * 16


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096) as url:
        yield url


def prompt_of(scheduler: FakeScheduler, tokenizer: Tokenizer) -> list[int]:
    return scheduler.submits[-1].prompt_token_ids


async def test_a_conversation_continues_from_the_kept_response(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    first = await oai.responses.create(model=MODEL_ID, input="Hi", instructions="Be brief.")
    assert first.store is True and first.previous_response_id is None
    scheduler.says("Fine.", chunk=2)
    second = await oai.responses.create(
        model=MODEL_ID, input="And then?", previous_response_id=first.id
    )
    assert second.output_text == "Fine." and second.previous_response_id == first.id
    # instructions are not carried over (OpenAI's rule); the turns and the answer are
    expected = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": REPLY_TEXT},
        {"role": "user", "content": "And then?"},
    ]
    assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode_chat(expected)

    # a third turn on the second carries all of it
    scheduler.says("Done.", chunk=2)
    await oai.responses.create(model=MODEL_ID, input="Bye", previous_response_id=second.id)
    expected += [{"role": "assistant", "content": "Fine."}, {"role": "user", "content": "Bye"}]
    assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode_chat(expected)

    got = await oai.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == "Fine." and got.usage == second.usage

    asc = [i async for i in oai.responses.input_items.list(second.id, order="asc", limit=1)]
    assert [i.type for i in asc] == ["message"] * 3  # paged one by one through ``after``
    assert [i.content[0].text for i in asc] == ["Hi", REPLY_TEXT, "And then?"]
    page = await oai.responses.input_items.list(second.id)  # newest first by default
    assert [i.id for i in page.data] == [i.id for i in reversed(asc)]


async def test_a_streamed_response_is_kept_before_it_is_done(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    events = [e async for e in await oai.responses.create(model=MODEL_ID, input="Hi", stream=True)]
    assert events[0].response.store is True
    done = events[-1].response
    assert done.store is True
    got = await oai.responses.retrieve(done.id)  # at once: kept before the last event
    assert got.output_text == REPLY_TEXT


async def test_a_function_call_continues_with_its_output(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    scheduler.says(call, chunk=2)
    r = await oai.responses.create(model=MODEL_ID, input="Weather?", tools=[FUNCTION])
    fc = r.output[0]
    assert fc.type == "function_call"
    scheduler.says("Sunny.", chunk=2)
    output = {"type": "function_call_output", "call_id": fc.call_id, "output": "sunny, 21 C"}
    r2 = await oai.responses.create(
        model=MODEL_ID, input=[output], previous_response_id=r.id, tools=[FUNCTION]
    )
    assert r2.output_text == "Sunny."
    prompt = tokenizer.decode(scheduler.submits[-1].prompt_token_ids, skip_special_tokens=False)
    assert "Weather?" in prompt and '"arguments": {"city": "Oslo"}' in prompt
    assert "<tool_response>\nsunny, 21 C" in prompt


async def test_deleted_and_unknown_ids_are_not_found(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    r = await oai.responses.create(model=MODEL_ID, input="Hi")
    await oai.responses.delete(r.id)
    for rid in (r.id, UNKNOWN, "resp_1", "x" * 5000):
        with pytest.raises(openai.NotFoundError):
            await oai.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError):
            await oai.responses.delete(rid)
    with pytest.raises(openai.NotFoundError) as e:
        await oai.responses.create(model=MODEL_ID, input="again", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_no_tenant_reaches_another_tenants_responses(
    gateway: str, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with httpx.AsyncClient(base_url=gateway) as http:
        r = await http.post(RESPONSES, json={"model": MODEL_ID, "input": "secret"}, headers=ALICE)
        rid = r.json()["id"]

        async def answers(headers: dict[str, str], some_id: str) -> list[tuple[int, str]]:
            got = [
                await http.get(f"{RESPONSES}/{some_id}", headers=headers),
                await http.get(f"{RESPONSES}/{some_id}/input_items", headers=headers),
                await http.delete(f"{RESPONSES}/{some_id}", headers=headers),
                await http.post(
                    RESPONSES,
                    json={"model": MODEL_ID, "input": "x", "previous_response_id": some_id},
                    headers=headers,
                ),
            ]
            return [(a.status_code, a.text.replace(some_id, "ID")) for a in got]

        # bob sees alice's id exactly as an id never issued: nothing says it exists
        assert await answers(BOB, rid) == await answers(BOB, UNKNOWN)
        assert all(status == 404 for status, _ in await answers(BOB, rid))
        assert "secret" not in str(await answers(BOB, rid))
        still = await http.get(f"{RESPONSES}/{rid}", headers=ALICE)
        assert still.status_code == 200 and still.json()["id"] == rid


async def test_store_false_is_not_kept(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    r = await oai.responses.create(model=MODEL_ID, input="Hi", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(r.id)


async def test_limits_of_size_and_count(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    async with (
        gateway_factory(max_model_len=4096, responses_max_kb=4, responses_per_tenant=2) as url,
        openai_client(url) as oai,
    ):
        scheduler.says(REPLY_TEXT, chunk=2)
        big = await oai.responses.create(model=MODEL_ID, input="word " * 1000)
        assert big.store is False and big.output_text == REPLY_TEXT  # answered, not kept
        with pytest.raises(openai.NotFoundError):
            await oai.responses.retrieve(big.id)
        made = []
        for _ in range(3):
            scheduler.says(REPLY_TEXT, chunk=2)
            made.append(await oai.responses.create(model=MODEL_ID, input="Hi"))
        with pytest.raises(openai.NotFoundError):
            await oai.responses.retrieve(made[0].id)  # the oldest went first
        assert [(await oai.responses.retrieve(r.id)).id for r in made[1:]] == [
            r.id for r in made[1:]
        ]


async def test_a_gateway_that_keeps_nothing(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    async with gateway_factory(responses_ttl_s=0) as url, openai_client(url) as oai:
        scheduler.says(REPLY_TEXT, chunk=2)
        r = await oai.responses.create(model=MODEL_ID, input="Hi")
        assert r.store is False
        with pytest.raises(openai.BadRequestError, match="keeps no responses"):
            await oai.responses.create(model=MODEL_ID, input="x", previous_response_id=r.id)
        with pytest.raises(openai.NotFoundError):
            await oai.responses.retrieve(r.id)


async def test_without_redis_the_gateway_keeps_them_in_memory(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    async with gateway_factory(redis_url="") as url, openai_client(url) as oai:
        scheduler.says(REPLY_TEXT, chunk=2)
        r = await oai.responses.create(model=MODEL_ID, input="Hi")
        scheduler.says("Fine.", chunk=2)
        await oai.responses.create(model=MODEL_ID, input="More", previous_response_id=r.id)
        expected = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": REPLY_TEXT},
            {"role": "user", "content": "More"},
        ]
        assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode_chat(expected)


async def test_a_store_that_is_down_loses_no_answer(
    gateway_factory: GatewayFactory,
    scheduler: FakeScheduler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraplex.tooling.ports import free_port

    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "0.3")
    down = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    async with gateway_factory(redis_url=down) as url, openai_client(url) as oai:
        scheduler.says(REPLY_TEXT, chunk=2)
        r = await oai.responses.create(model=MODEL_ID, input="Hi")
        assert r.output_text == REPLY_TEXT and r.store is False
        scheduler.says(REPLY_TEXT, chunk=2)
        events = [
            e async for e in await oai.responses.create(model=MODEL_ID, input="Hi", stream=True)
        ]
        assert events[-1].type == "response.completed" and events[-1].response.store is False
        with pytest.raises(openai.InternalServerError) as e:  # 503: try again
            await oai.responses.create(model=MODEL_ID, input="x", previous_response_id=UNKNOWN)
        assert e.value.status_code == 503
        assert json.dumps(e.value.body).count("Redis") == 1  # says why, names no host
