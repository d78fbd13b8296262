"""vLLM's ``prompt_logprobs`` through the official ``openai`` client (``extra_body``), as vLLM
answers it: per choice of a completion, beside the choices of a chat answer; each prompt token
after the first maps token ids to ``{"logprob", "rank", "decoded_token"}``, the token itself
first, then its k most likely alternatives.  The fake worker scores the prompt
(``fake_logprobs``): at even positions the token is its own top alternative, at odd ones it is
not among them, so both map shapes are checked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import ALICE, MODEL_ID, FakeScheduler
from tests.gateway.test_errors import CHAT, COMPLETIONS, assert_error

PROMPT = [5, 6, 7]  # token ids: the test knows each position's scores
MESSAGES = [{"role": "user", "content": "Hi there"}]


def entry(tok: Tokenizer, token_id: int, logprob: float, rank: int) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": tok.decode([token_id], False)}


async def test_completion_prompt_logprobs(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(" Paris is nice", chunk=2)
    out = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=8, extra_body={"prompt_logprobs": 2}
    )
    choice = out.choices[0]
    assert choice.text == " Paris is nice" and choice.logprobs is None  # no echo, no logprobs
    assert scheduler.submits[-1].sampling.prompt_logprobs == 2
    got = choice.prompt_logprobs  # type: ignore[attr-defined]
    assert got == [
        None,
        {  # position 1: token 6 is not among its 2 alternatives, so 3 keys, itself first
            "6": entry(tokenizer, 6, -4.0 - 1 / 64, 3),
            "7": entry(tokenizer, 7, -0.5, 1),
            "8": entry(tokenizer, 8, -0.625, 2),
        },
        {  # position 2: token 7 is its own top alternative: once, with rank 1
            "7": entry(tokenizer, 7, -0.25 - 2 / 64, 1),
            "8": entry(tokenizer, 8, -1.25 - 2 / 64, 2),
        },
    ]
    assert list(got[1]) == ["6", "7", "8"]  # vLLM's order: the token, then by rank


async def test_each_choice_of_a_batch_scores_its_own_prompt(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(" ok", chunk=2)
    out = await oai.completions.create(
        model=MODEL_ID, prompt=[PROMPT, [9, 10]], n=2, max_tokens=4,
        extra_body={"prompt_logprobs": 0},
    )  # fmt: skip
    got = [c.prompt_logprobs for c in sorted(out.choices, key=lambda c: c.index)]  # type: ignore[attr-defined]
    assert [len(g) for g in got] == [3, 3, 2, 2]
    assert got[2] == got[3] == [None, {"10": entry(tokenizer, 10, -4.0 - 1 / 64, 1)}]
    assert got[0][2] == {"7": entry(tokenizer, 7, -0.25 - 2 / 64, 1)}


async def test_with_echo_each_view_shows_its_own_count(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """``echo`` + ``logprobs`` 1 and ``prompt_logprobs`` 3: the workers compute 3 alternatives
    once; the echoed tokens show 1 (plus the token itself), ``prompt_logprobs`` 3."""
    scheduler.says(" Paris", chunk=2)
    out = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=4, echo=True, logprobs=1,
        extra_body={"prompt_logprobs": 3},
    )  # fmt: skip
    assert scheduler.submits[-1].sampling.prompt_logprobs == 3
    choice = out.choices[0]
    assert choice.text == tokenizer.decode(PROMPT) + " Paris"
    lp = choice.logprobs
    assert lp.token_logprobs[:3] == [None, -4.0 - 1 / 64, -0.25 - 2 / 64]
    assert [len(t) for t in lp.top_logprobs[1:3]] == [2, 1]
    assert len(lp.tokens) == 3 + out.usage.completion_tokens
    got = choice.prompt_logprobs  # type: ignore[attr-defined]
    assert [None if g is None else len(g) for g in got] == [None, 4, 3]
    assert got[1]["6"] == entry(tokenizer, 6, -4.0 - 1 / 64, 4)

    # the other way round: echo's 3 computed, prompt_logprobs shows 1
    out = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=4, echo=True, logprobs=3,
        extra_body={"prompt_logprobs": 1},
    )  # fmt: skip
    assert scheduler.submits[-1].sampling.prompt_logprobs == 3
    assert [len(t) for t in out.choices[0].logprobs.top_logprobs[1:3]] == [4, 3]
    got = out.choices[0].prompt_logprobs  # type: ignore[attr-defined]
    assert got[1:] == [
        {"6": entry(tokenizer, 6, -4.0 - 1 / 64, 4), "7": entry(tokenizer, 7, -0.5, 1)},
        {"7": entry(tokenizer, 7, -0.25 - 2 / 64, 1)},
    ]

    plain = await oai.completions.create(model=MODEL_ID, prompt=PROMPT, echo=True, logprobs=1)
    assert "prompt_logprobs" not in plain.choices[0].model_dump()  # only when asked for
    only = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, echo=True, max_tokens=0, extra_body={"prompt_logprobs": 1}
    )
    assert only.choices[0].text == tokenizer.decode(PROMPT)
    assert only.choices[0].logprobs is None  # echo without logprobs shows none
    assert len(only.choices[0].prompt_logprobs) == 3  # type: ignore[attr-defined]


async def test_chat_prompt_logprobs_beside_the_choices(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says("Hello!", chunk=2)
    out = await oai.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=8, extra_body={"prompt_logprobs": 1}
    )
    assert out.choices[0].message.content == "Hello!"
    ids = scheduler.submits[-1].prompt_token_ids
    got = out.prompt_logprobs  # type: ignore[attr-defined]
    assert len(got) == len(ids) == out.usage.prompt_tokens and got[0] is None
    for pos, (token_id, scores) in enumerate(zip(ids[1:], got[1:], strict=True), start=1):
        assert next(iter(scores)) == str(token_id)
        assert scores[str(token_id)]["rank"] == (1 if pos % 2 == 0 else 1 + pos)
        assert len(scores) == (1 if pos % 2 == 0 else 2)


async def test_streams_accept_only_prompt_logprobs_0(
    oai: AsyncOpenAI, scheduler: FakeScheduler
) -> None:
    """As vLLM: a stream cannot carry them (a 400), except 0, accepted and not computed."""
    scheduler.says(" ok")
    with pytest.raises(BadRequestError) as err:
        await oai.completions.create(
            model=MODEL_ID, prompt=PROMPT, stream=True, extra_body={"prompt_logprobs": 1}
        )
    assert err.value.body["param"] == "prompt_logprobs"  # type: ignore[index]
    with pytest.raises(BadRequestError):
        await oai.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, stream=True, extra_body={"prompt_logprobs": 2}
        )
    assert scheduler.submits == []
    stream = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, stream=True, extra_body={"prompt_logprobs": 0}
    )
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == " ok"
    assert scheduler.submits[-1].sampling.prompt_logprobs is None


@pytest.mark.parametrize("value", [-1, -7, 21, 10**30, "many", [2], {"k": 1}, 2.5])
async def test_bad_values_are_400s(scheduler: FakeScheduler, gateway: str, value: Any) -> None:
    """vLLM's -1 (the whole vocabulary) too: at most 20, as ``logprobs``."""
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        for path, body in (
            (COMPLETIONS, {"model": MODEL_ID, "prompt": "Hi"}),
            (CHAT, {"model": MODEL_ID, "messages": MESSAGES}),
        ):
            r = await http.post(path, json={**body, "prompt_logprobs": value})
            says = "whole vocabulary" if value == -1 else ""  # vLLM's "all of them"
            assert_error(r, 400, param="prompt_logprobs", says=says)
    assert scheduler.submits == []
