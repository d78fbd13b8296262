"""Tool calling through the gateway with the official ``openai`` client: the tools reach the chat
template, the answer's calls come back as ``tool_calls`` (whole and streamed, which agree),
``required`` and named choices constrain the output, and bad tools are a 400 with nothing queued.
The fake scheduler plays the model: it "generates" the tokens of a text the test chooses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import (
    ALICE,
    ALICE_KEY,
    MODEL_ID,
    FakeScheduler,
    GatewayFactory,
)
from tests.gateway.test_errors import CHAT, assert_refused
from tests.gateway.test_tool_calls import WEATHER

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
ANSWER = (
    'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096) as url:  # the tools block is long
        yield url


async def merged_stream(oai: AsyncOpenAI, **kw: Any) -> tuple[str, list[dict[str, Any]], str]:
    """Content, tool calls merged as clients merge deltas, and the finish reason."""
    content, calls, finish = "", {}, ""
    stream = await oai.chat.completions.create(stream=True, **kw)
    async for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = d.id or c["id"]
                c["name"] += (d.function and d.function.name) or ""
                c["arguments"] += (d.function and d.function.arguments) or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


async def test_auto_calls_come_back_as_tool_calls_whole_and_streamed(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(ANSWER)
    r = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=[WEATHER])
    # the tools were rendered into the prompt by the chat template
    sent = scheduler.submits[-1]
    assert sent.prompt_token_ids == tokenizer.encode_chat(MESSAGES, True, [WEATHER])
    assert "get_weather" in tokenizer.decode(sent.prompt_token_ids)
    assert sent.sampling.structured_outputs is None  # auto: free text, read afterwards
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking.\n"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    content, calls, finish = await merged_stream(
        oai, model=MODEL_ID, messages=MESSAGES, tools=[WEATHER]
    )
    assert (content, finish) == ("Checking.\n", "tool_calls")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert calls[0]["id"].startswith("call_")


async def test_text_that_calls_nothing_is_content(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says("It is <b>sunny</b> in <tool_cal")
    r = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=[WEATHER])
    assert r.choices[0].message.content == "It is <b>sunny</b> in <tool_cal"
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
    content, calls, _ = await merged_stream(oai, model=MODEL_ID, messages=MESSAGES, tools=[WEATHER])
    assert (content, calls) == ("It is <b>sunny</b> in <tool_cal", [])


async def test_required_and_named_constrain_the_output(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says('[{"name": "get_weather", "parameters": {"city": "Rome"}}]')
    r = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, tools=[WEATHER], tool_choice="required"
    )
    constraint = scheduler.submits[-1].sampling.structured_outputs
    assert constraint is not None and json.loads(constraint.spec)["type"] == "array"
    (call,) = r.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Rome"},
    )
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None

    scheduler.says('{"city": "Oslo"}', chunk=2)
    named = {"type": "function", "function": {"name": "get_weather"}}
    content, calls, finish = await merged_stream(
        oai, model=MODEL_ID, messages=MESSAGES, tools=[WEATHER], tool_choice=named
    )
    constraint = scheduler.submits[-1].sampling.structured_outputs
    assert json.loads(constraint.spec) == WEATHER["function"]["parameters"]  # type: ignore[union-attr]
    assert (content, finish) == ("", "stop")  # OpenAI: a forced function finishes with stop
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"})
    ]


async def test_a_conversation_with_past_calls_and_results_renders(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says("It is sunny in Paris.")
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = await oai.chat.completions.create(model=MODEL_ID, messages=history, tools=[WEATHER])
    assert r.choices[0].message.content == "It is sunny in Paris."
    prompt = tokenizer.decode(scheduler.submits[-1].prompt_token_ids, skip_special_tokens=False)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name", "64"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice", "not in tools"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "cannot be combined"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"}, "tools", "schema"),
        ({"tools": "get_weather"}, "tools", ""),
    ],
)  # fmt: skip
async def test_bad_tools_are_a_400_and_nothing_is_queued(
    gateway: str, scheduler: FakeScheduler, body: dict[str, Any], param: str, words: str
) -> None:
    full = {"model": MODEL_ID, "messages": MESSAGES, **body}
    await assert_refused(gateway, scheduler, CHAT, full, param, words)


async def test_without_a_parser_auto_is_refused_but_required_works(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    async with gateway_factory(max_model_len=4096, tool_call_parser="none") as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE_KEY, max_retries=0)
        with pytest.raises(BadRequestError) as e:
            await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=[WEATHER])
        assert "--tool-call-parser" in str(e.value) and scheduler.submits == []
        scheduler.says('[{"name": "get_weather", "parameters": {"city": "Rome"}}]')
        r = await client.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, tools=[WEATHER], tool_choice="required"
        )
        assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
        await client.close()


async def test_tokenize_renders_tools_as_the_chat_route_does(
    gateway: str, tokenizer: Tokenizer
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(
            "/tokenize", json={"model": MODEL_ID, "messages": MESSAGES, "tools": [WEATHER]}
        )
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == tokenizer.encode_chat(MESSAGES, True, [WEATHER])


async def test_tool_choice_none_shows_the_tools_but_parses_nothing(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """As vLLM: the template gets the tools (the model knows them), the answer is plain content
    even when it looks like a call; --exclude-tools-when-tool-choice-none leaves them out."""
    for exclude in (False, True):
        async with gateway_factory(
            max_model_len=4096, exclude_tools_when_tool_choice_none=exclude
        ) as url:
            client = AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE_KEY, max_retries=0)
            scheduler.says(ANSWER)
            r = await client.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, tools=[WEATHER], tool_choice="none"
            )
            await client.close()
        assert r.choices[0].message.content == ANSWER and not r.choices[0].message.tool_calls
        shown = None if exclude else [WEATHER]
        assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode_chat(
            MESSAGES, True, shown
        )
