"""OpenAI's Responses API through the official ``openai`` client: text, streamed events and
``responses.stream``'s final response, function tools and their outputs back in ``input``,
reasoning items, ``text.format``, and what is refused.  The fake scheduler plays the model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncOpenAI

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import (
    ALICE,
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    GatewayFactory,
)
from tests.gateway.test_errors import assert_refused
from tests.gateway.test_tool_calls import WEATHER

FUNCTION = {"type": "function", **WEATHER["function"]}  # the Responses API's flat form
RESPONSES = "/v1/responses"


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096, reasoning_parser="qwen3") as url:
        yield url


async def test_text_whole_and_streamed(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    r = await oai.responses.create(
        model=MODEL_ID, input="Hi", instructions="Be brief.", max_output_tokens=40
    )
    assert r.status == "completed" and r.output_text == REPLY_TEXT
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.output_tokens == len(tokenizer.encode(REPLY_TEXT, add_special_tokens=False))
    sent = scheduler.submits[-1]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent.prompt_token_ids == tokenizer.encode_chat(messages)
    assert sent.sampling.max_tokens == 40

    events = [e async for e in await oai.responses.create(model=MODEL_ID, input="Hi", stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == REPLY_TEXT == events[-1].response.output_text
    # the SDK's own accumulator reads the same answer
    async with oai.responses.stream(model=MODEL_ID, input="Hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == REPLY_TEXT


async def test_cut_short_is_incomplete(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2, finish="length")
    r = await oai.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=64)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


async def test_function_calls_and_their_outputs(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(
        '<think>need it</think><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
        chunk=2,
    )
    r = await oai.responses.create(model=MODEL_ID, input="Weather?", tools=[FUNCTION])
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "function_call"]
    assert r.output[0].content[0].text == "need it"
    call = r.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id.startswith("call_")
    # the call and its output go back in input; the template renders them
    scheduler.says("Sunny.", chunk=2)
    follow = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]  # fmt: skip
    r2 = await oai.responses.create(model=MODEL_ID, input=follow, tools=[FUNCTION])
    assert r2.output_text == "Sunny."
    prompt = tokenizer.decode(scheduler.submits[-1].prompt_token_ids, skip_special_tokens=False)
    assert '"arguments": {"city": "Oslo"}' in prompt and "<tool_response>\nsunny, 21 C" in prompt

    # streamed: the call arrives as an item with its arguments, then the completed response
    scheduler.says(
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>', chunk=2
    )
    events = [
        e
        async for e in await oai.responses.create(
            model=MODEL_ID, input="Weather?", tools=[FUNCTION], stream=True
        )
    ]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(e.arguments) for e in done] == [{"city": "Rome"}]
    assert events[-1].response.output[0].type == "function_call"


async def test_required_and_text_format_constrain_the_output(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says('{"city": "Bern"}', chunk=2)
    r = await oai.responses.create(
        model=MODEL_ID,
        input="x",
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert json.loads(r.output[0].arguments) == {"city": "Bern"}
    assert scheduler.submits[-1].sampling.structured_outputs is not None
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    scheduler.says('{"ok": true}', chunk=2)
    r = await oai.responses.create(
        model=MODEL_ID,
        input="x",
        text={"format": {"type": "json_schema", "name": "s", "schema": schema}},
    )
    assert json.loads(r.output_text) == {"ok": True}
    got = scheduler.submits[-1].sampling.structured_outputs
    assert got is not None and json.loads(got.spec) == schema


@pytest.mark.parametrize(
    ("body", "param", "says_"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "at most 16"),
        ({"background": True, "store": False}, "background", "store"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools.0", "function tools"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0", "text parts"),
        ({"input": [{"type": "computer_call"}]}, "input.0", "not supported"),
        ({"input": []}, "input", "at least one"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": 5, "arguments": "{}"}]}, "input", "input"),
    ],
)  # fmt: skip
async def test_what_is_refused(
    gateway: str, scheduler: FakeScheduler, body: dict, param: str, says_: str
) -> None:
    full = {"model": MODEL_ID, "input": "hi", **body}
    await assert_refused(gateway, scheduler, RESPONSES, full, param, says_)


async def test_an_error_after_the_start_is_an_error_event(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2, finish=None, error=(500, "boom"))
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(RESPONSES, json={"model": MODEL_ID, "input": "hi", "stream": True})
    last = r.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error") and '"message"' in last
