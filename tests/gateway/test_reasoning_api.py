"""A gateway with ``--reasoning-parser``, through the official ``openai`` client: the thinking
comes back as ``reasoning`` (and ``reasoning_content``), whole and streamed alike, before any
tool call; constrained outputs are not read for it; ``chat_template_kwargs`` are checked."""

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
    FakeScheduler,
    GatewayFactory,
)
from tests.gateway.test_errors import CHAT, assert_refused

MESSAGES = [{"role": "user", "content": "Is 9.11 more than 9.8?"}]
ANSWER = "<think>\nCompare tenths: 1 < 8.\n</think>\n\nNo, 9.8 is more."


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(max_model_len=4096, reasoning_parser="qwen3") as url:
        yield url


async def test_thinking_comes_back_as_reasoning_whole_and_streamed(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(ANSWER)
    r = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES)
    message = r.choices[0].message.model_dump()
    assert message["content"] == "No, 9.8 is more."
    assert message["reasoning"] == message["reasoning_content"] == "\nCompare tenths: 1 < 8.\n"

    reasoning, old_name, content = "", "", ""
    stream = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES, stream=True)
    async for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            reasoning += delta.get("reasoning") or ""
            old_name += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
    assert (reasoning, old_name, content) == (
        message["reasoning"],
        message["reasoning"],
        message["content"],
    )


async def test_thinking_before_a_tool_call(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(
        '<think>use f</think><tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    )
    tools = [{"type": "function", "function": {"name": "f"}}]
    r = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES, tools=tools)
    choice = r.choices[0]
    assert choice.model_dump()["message"]["reasoning"] == "use f"
    assert choice.message.content is None and choice.finish_reason == "tool_calls"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"a": 1}


async def test_an_answer_that_does_not_think_and_a_constrained_one_are_content(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says("Plain answer.")
    r = await oai.chat.completions.create(model=MODEL_ID, messages=MESSAGES)
    assert r.choices[0].message.content == "Plain answer."
    assert "reasoning" not in r.choices[0].message.model_dump(exclude_none=True)
    scheduler.says('{"a": "<think>x</think>"}')
    r = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert r.choices[0].message.content == '{"a": "<think>x</think>"}'


async def test_chat_template_kwargs(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    body = {"model": MODEL_ID, "messages": MESSAGES, "chat_template_kwargs": {"messages": []}}
    await assert_refused(gateway, scheduler, CHAT, body, "chat_template_kwargs", "not a variable")
    scheduler.says("ok")
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        body["chat_template_kwargs"] = {"enable_thinking": False}
        r = await http.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        t = await http.post(
            "/tokenize",
            json={"model": MODEL_ID, "messages": MESSAGES, "chat_template_kwargs": {"tools": 1}},
        )
        assert t.status_code == 400 and t.json()["error"]["param"] == "chat_template_kwargs"
