"""Batch prompts on ``/v1/completions`` (a list of strings or of token-id lists, as vLLM takes
them) and ``usage.prompt_tokens_details.cached_tokens``, through the official ``openai`` client
against the gateway, real NATS and Redis, and the fake scheduler peer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from loraplex.protocol import SubmitRequest
from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import ALICE, MODEL_ID, FakeScheduler, GatewayFactory, Plan

PROMPTS = ["Hello there", "Once upon a time, in a land", "The end."]
SEED = 7


def reply(prompt_ids: list[int], seed: int | None) -> list[int]:
    """What the fake 'workers' generate: depends on the prompt and the choice's seed."""
    k = (sum(prompt_ids) + (seed or 0)) % 50
    return [100 + k, 200 + k, 300 + k]


def by_prompt(cached: int = 0, **kw: Any) -> Any:
    def plan(req: SubmitRequest) -> Plan:
        ids = reply(req.prompt_token_ids, req.sampling.seed)
        return Plan(tokens=ids, finish_reason="length", cached_tokens=cached, **kw)

    return plan


async def test_a_batch_of_strings_is_one_request_per_prompt_and_choice(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = by_prompt(cached=2)
    n = 2
    out = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPTS, max_tokens=3, n=n, seed=SEED, temperature=0.5
    )
    ids = [tokenizer.encode(p) for p in PROMPTS]
    # each prompt x choice was its own SubmitRequest, prompt-major, with choice j at seed + j
    subs = scheduler.submits
    assert [s.prompt_token_ids for s in subs] == [i for i in ids for _ in range(n)]
    assert [s.sampling.seed for s in subs] == [SEED, SEED + 1] * len(PROMPTS)
    assert len({s.request_id for s in subs}) == len(PROMPTS) * n
    # vLLM's index: prompt i's choice j is i * n + j
    assert [c.index for c in out.choices] == list(range(len(PROMPTS) * n))
    for c in out.choices:
        i, j = divmod(c.index, n)
        assert c.text == tokenizer.decode(reply(ids[i], SEED + j))
        assert c.finish_reason == "length"
    # each prompt counts once, every choice's completion adds up
    assert out.usage.prompt_tokens == sum(len(i) for i in ids)
    assert out.usage.completion_tokens == 3 * len(PROMPTS) * n
    assert out.usage.prompt_tokens_details.cached_tokens == 2 * len(PROMPTS)


async def test_a_batch_of_token_lists_streams_every_choice_with_its_index(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = by_prompt(chunk=1, delay_s=0.01)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    stream = await oai.completions.create(
        model=MODEL_ID,
        prompt=prompts,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    finishes: dict[int, list[str | None]] = {}
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        assert len(chunk.choices) <= 1
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            finishes.setdefault(c.index, []).append(c.finish_reason)
    assert [s.prompt_token_ids for s in scheduler.submits] == prompts
    assert sorted(texts) == [0, 1, 2]
    for i, p in enumerate(prompts):
        assert texts[i] == tokenizer.decode(reply(p, None))
        assert finishes[i][-1] == "length" and set(finishes[i][:-1]) <= {None}
    assert usage is not None and usage.prompt_tokens == 9 and usage.completion_tokens == 9
    assert usage.prompt_tokens_details.cached_tokens == 0


async def test_echo_works_per_prompt_also_with_max_tokens_0(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = by_prompt()
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=10) as http:
        body = {"model": MODEL_ID, "prompt": PROMPTS[:2], "echo": True, "max_tokens": 0}
        r = await http.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [c["text"] for c in out["choices"]] == PROMPTS[:2]
        assert out["usage"]["completion_tokens"] == 0
        assert all(s.sampling.max_tokens == 1 for s in scheduler.submits)  # scored, then dropped

        prompts = [[5, 6, 7], [8, 9]]
        r = await http.post("/v1/completions", json={**body, "prompt": prompts, "max_tokens": 3})
        assert r.status_code == 200, r.text
        texts = [c["text"] for c in r.json()["choices"]]
        assert texts == [tokenizer.decode(p) + tokenizer.decode(reply(p, None)) for p in prompts]


async def test_a_refused_prompt_fails_the_batch_and_cancels_the_others(
    gateway: str, scheduler: FakeScheduler
) -> None:
    def plan(req: SubmitRequest) -> Plan:
        if len(scheduler.submits) == 3:
            return Plan(code=429, message="tenant queue full")
        return Plan(tokens=[5], finish_reason=None)  # still running when the third is refused

    scheduler.plan = plan
    body = {"model": MODEL_ID, "prompt": PROMPTS + ["four"], "max_tokens": 4}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=10) as http:
        r = await http.post("/v1/completions", json=body)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["message"] == "tenant queue full"
    assert len(scheduler.submits) == 3  # the fourth prompt was never sent
    for sub in scheduler.submits[:2]:  # the started ones are cancelled upstream
        await scheduler.wait_cancel(sub.request_id)


async def test_the_bound_on_prompts_times_n_is_configurable(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_GATEWAY_MAX_BATCH_CHOICES", "4")
    scheduler.plan = by_prompt()
    async with (
        gateway_factory() as url,
        httpx.AsyncClient(base_url=url, headers=ALICE, timeout=10) as http,
    ):
        body = {"model": MODEL_ID, "prompt": PROMPTS[:2], "n": 2, "max_tokens": 3}
        assert (await http.post("/v1/completions", json=body)).status_code == 200
        assert len(scheduler.submits) == 4
        r = await http.post("/v1/completions", json={**body, "prompt": PROMPTS})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "prompt" and "6 requests; at most 4" in err["message"]
    assert len(scheduler.submits) == 4


async def test_cached_tokens_on_both_routes_streaming_or_not(
    oai: AsyncOpenAI, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[5, 6, 7], finish_reason="length", cached_tokens=4)
    one = await oai.completions.create(model=MODEL_ID, prompt=PROMPTS[1], max_tokens=3)
    assert one.usage.prompt_tokens_details.cached_tokens == 4
    stream = await oai.completions.create(
        model=MODEL_ID,
        prompt=PROMPTS[1],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [c.usage async for c in stream if c.usage is not None]
    assert [u.prompt_tokens_details.cached_tokens for u in usages] == [4]

    messages = [{"role": "user", "content": "Tell me a story."}]
    chat = await oai.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, n=2)
    # n choices share one prompt: it and its cached tokens count once
    assert chat.usage.prompt_tokens == len(tokenizer.encode_chat(messages))
    assert chat.usage.completion_tokens == 6
    assert chat.usage.prompt_tokens_details.cached_tokens == 4
    stream = await oai.chat.completions.create(
        model=MODEL_ID,
        messages=messages,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [c.usage async for c in stream if c.usage is not None]
    assert [u.prompt_tokens_details.cached_tokens for u in usages] == [4]
