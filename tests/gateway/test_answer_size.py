"""An answer that could exceed ``LORAPLEX_GATEWAY_MAX_ANSWER_MB`` is a 400 up front
(``answer_size.py``): the estimate, then the whole gateway through the official ``openai``
client, where a stream's own tokens do not count (they go out as they come) and a request under
the limit is served."""

from __future__ import annotations

import dataclasses

import openai
import pytest
from openai import AsyncOpenAI

from loraplex.gateway.answer_size import ENTRY_BYTES, answer_bytes, check_answer_size
from loraplex.gateway.errors import InvalidParamError
from loraplex.gateway.prepare import Echo, Prepared
from loraplex.sampling_params import SamplingParams
from tests.gateway.conftest import ALICE_KEY, MODEL_ID, REPLY_TEXT


def _prepared(prompt: int, max_tokens: int, **kw: object) -> Prepared:
    logprobs = kw.pop("logprobs", None)
    sampling = SamplingParams(max_tokens=max_tokens, logprobs=logprobs)  # type: ignore[arg-type]
    p = Prepared("r", "t", MODEL_ID, None, list(range(prompt)), sampling, 0, 0.0)
    return dataclasses.replace(p, **kw)  # type: ignore[arg-type]


def test_the_estimate_counts_choices_tokens_and_logprobs():
    plain = _prepared(100, 50)
    assert answer_bytes(plain, stream=False) == 50 * 16
    assert answer_bytes(plain, stream=True) == 0  # its tokens go out as they come
    scored = _prepared(100, 50, logprobs=20, echo=Echo("x", logprobs=20), prompt_logprobs=20)
    per_token = 16 + ENTRY_BYTES * 21
    assert answer_bytes(scored, stream=False) == 150 * per_token + 100 * ENTRY_BYTES * 21
    assert answer_bytes(scored, stream=True) == 100 * per_token + 100 * ENTRY_BYTES * 21
    # The red team's request: 2,040 prompt tokens, n=16, echo + logprobs + prompt_logprobs 20.
    theirs = _prepared(2040, 1, logprobs=20, echo=Echo("x", logprobs=20), prompt_logprobs=20)
    with pytest.raises(InvalidParamError) as e:
        check_answer_size([theirs], 16, False, 32 * 1024 * 1024)
    assert e.value.code == "answer_too_large" and "stream the answer" in str(e.value)
    check_answer_size([theirs], 1, False, 32 * 1024 * 1024)  # one choice: about 5.5 MiB
    check_answer_size([theirs] * 64, 16, False, 0)  # 0: no limit


async def test_a_too_large_answer_is_a_400_and_a_stream_of_the_same_tokens_is_served(
    gateway_factory, scheduler
):  # type: ignore[no-untyped-def]
    scheduler.says(REPLY_TEXT)
    async with gateway_factory(max_answer_mb=0.5) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key=ALICE_KEY, max_retries=0)
        async with client:
            with pytest.raises(openai.BadRequestError) as e:
                await client.completions.create(
                    model=MODEL_ID, prompt=list(range(5, 205)), max_tokens=8, n=16, echo=True,
                    logprobs=20, extra_body={"prompt_logprobs": 20},
                )  # fmt: skip
            error = e.value.body
            assert isinstance(error, dict) and error["code"] == "answer_too_large"
            assert "MiB" in error["message"] and error["type"] == "invalid_request_error"
            many = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 50, "n": 16, "logprobs": 20}
            with pytest.raises(openai.BadRequestError):
                await client.completions.create(**many)
            stream = await client.completions.create(**many, stream=True)
            texts = [""] * 16
            async for chunk in stream:
                for c in chunk.choices:
                    texts[c.index] += c.text
            assert texts == [REPLY_TEXT] * 16
            small = await client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=8)
            assert small.choices[0].text == REPLY_TEXT
