"""vLLM's ``allowed_token_ids`` and ``bad_words`` through the official client: they reach the
workers as SamplingParams (bad words tokenized as vLLM does, with the spaced form), and what is
outside the vocabulary or too large is a 400 naming the field."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, BadRequestError

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import MODEL_ID, REPLY_TEXT, FakeScheduler


async def test_they_reach_the_workers(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT)
    await oai.completions.create(
        model=MODEL_ID, prompt="hi", max_tokens=4,
        extra_body={"allowed_token_ids": [5, 9, 5, 11], "bad_words": ["fox", " lazy dog"]},
    )  # fmt: skip
    sent = scheduler.submits[-1].sampling
    assert sent.allowed_token_ids == (5, 9, 11)
    enc = lambda text: tuple(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    forms = set(sent.bad_words_token_ids)
    assert enc("fox") in forms and enc("lazy dog") in forms
    for word in ("fox", "lazy dog"):  # the spaced form when it is a new first token
        plain, spaced = enc(word), enc(" " + word)
        assert (spaced in forms) == (spaced[0] != plain[0] and len(spaced) == len(plain))
    scheduler.says(REPLY_TEXT)
    await oai.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        extra_body={"allowed_token_ids": [7]},
    )  # fmt: skip
    assert scheduler.submits[-1].sampling.allowed_token_ids == (7,)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"allowed_token_ids": [10**7]}, "allowed_token_ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
        ({"allowed_token_ids": "5"}, "allowed_token_ids"),
        ({"bad_words": ["   "]}, "bad_words"),
        ({"bad_words": ["x" * 300]}, "bad_words"),
        ({"bad_words": [f"w{i}" for i in range(129)]}, "bad_words"),
        ({"bad_words": [" ".join(["fox"] * 70)]}, "bad_words"),  # too many tokens
        ({"bad_words": "fox"}, "bad_words"),
    ],
)
async def test_bad_values_are_refused(
    oai: AsyncOpenAI, scheduler: FakeScheduler, extra: dict, param: str
) -> None:
    with pytest.raises(BadRequestError) as e:
        await oai.completions.create(model=MODEL_ID, prompt="hi", max_tokens=4, extra_body=extra)
    assert e.value.body["param"].startswith(param)  # type: ignore[index,union-attr]
