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
