"""More of vLLM's request fields through the official client: ``add_special_tokens`` (both
routes, vLLM's defaults), ``return_tokens_as_token_ids``, and the fields not served, refused with
a 400 that names them instead of being dropped (harmless extras still pass)."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, BadRequestError

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import MODEL_ID, REPLY_TEXT, FakeScheduler

MESSAGES = [{"role": "user", "content": "Hi"}]


async def test_add_special_tokens(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    for extra, special in (({}, True), ({"add_special_tokens": False}, False)):
        scheduler.says(REPLY_TEXT)
        await oai.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=3, extra_body=extra)
        assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode("Hello", special)
    assert tokenizer.encode("Hello", True) != tokenizer.encode("Hello", False)  # BOS: it matters
    for extra, special in (({}, False), ({"add_special_tokens": True}, True)):
        scheduler.says(REPLY_TEXT)
        await oai.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, max_tokens=3, extra_body=extra
        )
        text = tokenizer.apply_chat_template(MESSAGES, True)
        assert scheduler.submits[-1].prompt_token_ids == tokenizer.encode(text, special)


async def test_return_tokens_as_token_ids(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(ids)
    out = await oai.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=len(ids), logprobs=2,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    lp = out.choices[0].logprobs
    assert lp.tokens == [f"token_id:{t}" for t in ids]
    assert all(k.startswith("token_id:") for top in lp.top_logprobs for k in top)
    scheduler.says(ids)
    chat = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=len(ids), logprobs=True, top_logprobs=1,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [f"token_id:{t}" for t in ids]
    assert all(t.token.startswith("token_id:") for c in content for t in c.top_logprobs)
    scheduler.says(ids)
    plain = await oai.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=3, logprobs=0)
    assert not plain.choices[0].logprobs.tokens[0].startswith("token_id:")


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("completions", "logits_processors", ["my.module:Processor"]),
        ("chat", "logits_processors", [{"qualname": "x"}]),
        ("completions", "prompt_embeds", "AAAA"),
        ("chat", "documents", [{"title": "a", "text": "b"}]),
        ("chat", "echo", True),
    ],
)
async def test_fields_not_served_are_refused(
    oai: AsyncOpenAI, scheduler: FakeScheduler, route: str, field: str, value: object
) -> None:
    with pytest.raises(BadRequestError) as e:
        if route == "chat":
            await oai.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, max_tokens=3, extra_body={field: value}
            )
        else:
            await oai.completions.create(
                model=MODEL_ID, prompt="Hi", max_tokens=3, extra_body={field: value}
            )
    assert e.value.body["param"] == field  # type: ignore[index]
    assert scheduler.submits == []


async def test_harmless_extras_pass(oai: AsyncOpenAI, scheduler: FakeScheduler) -> None:
    scheduler.says(REPLY_TEXT)
    extra = {"kv_transfer_params": {"x": 1}, "echo": False, "documents": None, "foo": [1]}
    out = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=3, extra_body=extra
    )
    assert out.choices[0].message.content


async def test_return_token_ids_whole_and_streamed(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    extra = {"return_token_ids": True}
    scheduler.says(ids, chunk=3)
    out = await oai.completions.create(
        model=MODEL_ID, prompt="Hello", max_tokens=len(ids), extra_body=extra
    )
    choice = out.choices[0].model_dump()
    assert choice["token_ids"] == ids
    assert choice["prompt_token_ids"] == scheduler.submits[-1].prompt_token_ids
    scheduler.says(ids, chunk=3)
    chat = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=len(ids), extra_body=extra
    )
    dumped = chat.model_dump()
    assert dumped["prompt_token_ids"] == scheduler.submits[-1].prompt_token_ids
    assert dumped["choices"][0]["token_ids"] == ids

    for route in ("completions", "chat"):
        scheduler.says(ids, chunk=3)
        if route == "chat":
            stream = await oai.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, max_tokens=len(ids), stream=True,
                extra_body=extra,
            )  # fmt: skip
        else:
            stream = await oai.completions.create(
                model=MODEL_ID, prompt="Hello", max_tokens=len(ids), stream=True, extra_body=extra
            )
        chunks = [c.model_dump() async for c in stream]
        got = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids") or []]
        assert got == ids, route
        prompts = [
            c.get("prompt_token_ids") or c["choices"][0].get("prompt_token_ids")
            for c in chunks
            if c["choices"]
        ]
        shown = [p for p in prompts if p]
        assert shown == [scheduler.submits[-1].prompt_token_ids], route  # once, first


async def test_streamed_token_ids_survive_held_back_text(
    gateway_factory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:  # type: ignore[no-untyped-def]
    """A tool call's text is held back while it is read: its ids wait for the chunk that
    shows it, so the stream's ids still add up to the answer's."""
    from tests.gateway.conftest import openai_client
    from tests.gateway.test_tool_calls import WEATHER

    answer = 'Ok.<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    ids = tokenizer.encode(answer, add_special_tokens=False)
    async with gateway_factory(max_model_len=4096) as url, openai_client(url) as oai:
        scheduler.says(ids, chunk=2)
        stream = await oai.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, tools=[WEATHER], stream=True,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        chunks = [c.model_dump() async for c in stream]
    got = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids") or []]
    assert got == ids
    assert any(ch["delta"].get("tool_calls") for c in chunks for ch in c["choices"])
