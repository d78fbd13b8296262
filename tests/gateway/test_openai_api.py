"""Happy paths through the official ``openai`` client: completions, chat, streaming, usage,
models and adapters (registered through the gateway's adapter routes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from loraplex.prefix_keys import PREFIX_BLOCK, prefix_keys, reusable_blocks
from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import IM_END_ID, DemoModelInfo
from tests.gateway.conftest import (
    ALICE,
    ALICE_KEY,
    BOB,
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    Plan,
    register_adapter,
)

PROMPT = "Hello, world! How are you today?"


@pytest.fixture
async def client(gateway: str) -> AsyncIterator[Callable[..., AsyncOpenAI]]:
    """``client(api_key=ALICE_KEY)``: an AsyncOpenAI client of the gateway, closed afterwards."""
    made: list[AsyncOpenAI] = []

    def make(key: str = ALICE_KEY) -> AsyncOpenAI:
        made.append(AsyncOpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=10))
        return made[-1]

    yield make
    for c in made:
        await c.close()


@pytest.fixture
def reply_ids(tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(REPLY_TEXT, add_special_tokens=False)


async def test_completion_streaming_equals_non_streaming(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
    reply_ids: list[int],
) -> None:
    scheduler.plan = lambda _: Plan(tokens=reply_ids, finish_reason="length")
    oai = client()
    full = await oai.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=len(reply_ids), temperature=0
    )
    prompt_ids = tokenizer.encode(PROMPT)
    assert full.object == "text_completion" and full.model == MODEL_ID
    assert full.choices[0].text == tokenizer.decode(reply_ids) == REPLY_TEXT
    assert full.choices[0].finish_reason == "length"
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (
        len(prompt_ids),
        len(reply_ids),
    )
    assert full.usage.total_tokens == len(prompt_ids) + len(reply_ids)

    sub = scheduler.submits[-1]
    assert sub.prompt_token_ids == prompt_ids and sub.tenant == "alice" and sub.adapter is None
    assert sub.sampling.max_tokens == len(reply_ids) and sub.sampling.temperature == 0.0

    stream = await oai.completions.create(
        model=MODEL_ID,
        prompt=PROMPT,
        max_tokens=len(reply_ids),
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finishes, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts.append(c.text)
            finishes.append(c.finish_reason)
    assert "".join(texts) == full.choices[0].text
    assert len([t for t in texts if t]) > 1  # really streamed in pieces
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert usage is not None and usage.model_dump() == full.usage.model_dump()


async def test_chat_streaming_and_usage(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
    reply_ids: list[int],
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[*reply_ids, IM_END_ID], chunk=4)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story."},
    ]
    oai = client()
    full = await oai.chat.completions.create(
        model=MODEL_ID, messages=messages, max_completion_tokens=64, seed=7
    )
    prompt_ids = tokenizer.encode_chat(messages)
    msg = full.choices[0].message
    assert full.object == "chat.completion" and msg.role == "assistant"
    assert msg.content == REPLY_TEXT  # <|im_end|> is special: not shown
    assert full.choices[0].finish_reason == "stop"
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (
        len(prompt_ids),
        len(reply_ids) + 1,
    )
    sub = scheduler.submits[-1]
    assert sub.prompt_token_ids == prompt_ids
    assert (
        IM_END_ID in sub.sampling.stop_token_ids
        and sub.sampling.seed == 7
        and sub.sampling.max_tokens == 64
    )

    stream = await oai.chat.completions.create(
        model=MODEL_ID,
        messages=messages,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == msg.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()


async def test_chat_without_max_tokens_fills_context(
    gateway: str, client: Callable[..., AsyncOpenAI], scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[5, 6])
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        }
    ]
    await client().chat.completions.create(model=MODEL_ID, messages=messages)
    sub = scheduler.submits[-1]
    assert sub.prompt_token_ids == tokenizer.encode_chat([{"role": "user", "content": "Hi there"}])
    assert sub.sampling.max_tokens == 256 - len(sub.prompt_token_ids)


async def test_sampling_fields_and_stop_strings(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    tokenizer: Tokenizer,
    reply_ids: list[int],
) -> None:
    scheduler.plan = lambda _: Plan(tokens=reply_ids, chunk=2, delay_s=0.01)
    oai = client()
    out = await oai.completions.create(
        model=MODEL_ID,
        prompt=[1, 2, 3, 400],
        max_tokens=30,
        temperature=0.7,
        top_p=0.9,
        stop=[" lazy"],
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        extra_body={"top_k": 5, "ignore_eos": True, "repetition_penalty": 1.2},
    )
    assert out.choices[0].text == " The quick brown fox jumps over the"
    assert out.choices[0].finish_reason == "stop"
    sub = scheduler.submits[-1]
    assert sub.prompt_token_ids == [1, 2, 3, 400]
    s = sub.sampling
    assert (s.temperature, s.top_p, s.top_k, s.ignore_eos, s.stop) == (
        0.7,
        0.9,
        5,
        True,
        (" lazy",),
    )
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -0.25, 1.2)
    # the worker cut the text at the stop string and finished the request on the token that
    # completed it: the gateway counts the tokens up to that one and has nothing to cancel
    upto = next(k for k in range(1, len(reply_ids)) if " lazy" in tokenizer.decode(reply_ids[:k]))
    assert out.usage.completion_tokens == upto < len(reply_ids)
    await asyncio.sleep(0.2)
    assert not any(c.request_id == sub.request_id for c in scheduler.cancels)


async def test_models_and_adapters_per_tenant(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    demo: DemoModelInfo,
    reply_ids: list[int],
) -> None:
    scheduler.plan = lambda _: Plan(tokens=reply_ids)
    lora0, lora1 = demo.adapters
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        r = await register_adapter(http, lora0.path, "alice-private", ALICE)
        assert r.status_code == 201, r.text
        r = await register_adapter(http, lora1.path, "shared-lora", BOB, visibility="public")
        assert r.status_code == 201, r.text
        listed = (await http.get("/v1/adapters", headers=ALICE)).json()
        assert {a["name"] for a in listed["data"]} == {"alice-private", "shared-lora"}
        assert (await http.get("/v1/adapters/alice-private", headers=BOB)).status_code == 404

    alice, bob = client(), client("sk-bob-secret")
    alice_models = {m.id: m for m in (await alice.models.list()).data}
    assert set(alice_models) == {MODEL_ID, "alice-private", "shared-lora"}
    assert alice_models["alice-private"].model_dump()["parent"] == MODEL_ID
    assert alice_models[MODEL_ID].model_dump()["parent"] is None
    assert {m.id for m in (await bob.models.list()).data} == {MODEL_ID, "shared-lora"}

    out = await alice.completions.create(model="alice-private", prompt=PROMPT, max_tokens=20)
    assert out.model == "alice-private" and out.choices[0].text == REPLY_TEXT
    assert scheduler.submits[-1].adapter == "alice/alice-private"  # the id: owner/name
    await bob.chat.completions.create(
        model="shared-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    assert (
        scheduler.submits[-1].adapter == "bob/shared-lora" and scheduler.submits[-1].tenant == "bob"
    )
    with pytest.raises(NotFoundError) as e:
        await bob.completions.create(model="alice-private", prompt=PROMPT, max_tokens=5)
    assert e.value.code == "model_not_found"
    # SGLang's "base-model:adapter" names the same adapters, for the same tenants only
    out = await alice.completions.create(
        model=f"{MODEL_ID}:alice-private", prompt=PROMPT, max_tokens=20
    )
    assert out.model == f"{MODEL_ID}:alice-private"
    assert scheduler.submits[-1].adapter == "alice/alice-private"
    await bob.completions.create(model=f"{MODEL_ID}:shared-lora", prompt=PROMPT, max_tokens=5)
    assert scheduler.submits[-1].adapter == "bob/shared-lora"
    for other in (f"{MODEL_ID}:alice-private", "other-base:shared-lora", f"{MODEL_ID}:"):
        with pytest.raises(NotFoundError):
            await bob.completions.create(model=other, prompt=PROMPT, max_tokens=5)
    # SGLang's lora_path beside the base model (or the same adapter), on both routes
    await alice.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=5, extra_body={"lora_path": "alice-private"}
    )
    assert scheduler.submits[-1].adapter == "alice/alice-private"
    await alice.chat.completions.create(
        model="shared-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        extra_body={"lora_path": "shared-lora"},
    )  # fmt: skip
    assert scheduler.submits[-1].adapter == "bob/shared-lora"
    with pytest.raises(NotFoundError):
        await bob.completions.create(
            model=MODEL_ID, prompt=PROMPT, max_tokens=5, extra_body={"lora_path": "alice-private"}
        )
    with pytest.raises(BadRequestError) as bad:
        await alice.completions.create(
            model="shared-lora", prompt=PROMPT, max_tokens=5,
            extra_body={"lora_path": "alice-private"},
        )  # fmt: skip
    assert bad.value.body["param"] == "lora_path"  # type: ignore[index]

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        r = await http.delete("/v1/adapters/alice-private", headers=BOB)
        assert r.status_code == 404  # bob cannot see it, so it does not exist for him
        assert (await http.delete("/v1/adapters/alice-private", headers=ALICE)).json()[
            "deleted"
        ] is True
    assert {m.id for m in (await alice.models.list()).data} == {MODEL_ID, "shared-lora"}


async def test_tokens_repeated_by_a_redispatched_worker_are_shown_once(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    reply_ids: list[int],
) -> None:
    scheduler.plan = lambda _: Plan(tokens=reply_ids, finish_reason="length", replay_after=4)
    oai = client()
    full = await oai.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=len(reply_ids))
    assert full.choices[0].text == REPLY_TEXT
    assert full.usage.completion_tokens == len(reply_ids)


async def test_n_choices_are_separate_requests_merged_into_one_answer(
    gateway: str,
    client: Callable[..., AsyncOpenAI],
    scheduler: FakeScheduler,
    reply_ids: list[int],
) -> None:
    """n=3 with a seed: three scheduler requests (seeds 7, 8, 9), one answer with three
    choices; streamed, every chunk carries its choice's index and each choice finishes."""
    lengths = {}

    def plan(req):  # type: ignore[no-untyped-def]
        n = 3 + len(lengths)  # a different answer length per choice
        lengths[req.request_id] = n
        return Plan(tokens=reply_ids[:n], chunk=1, delay_s=0.005)

    scheduler.plan = plan
    oai = client()
    out = await oai.completions.create(
        model=MODEL_ID, prompt=[1, 2, 3], max_tokens=10, n=3, seed=7, temperature=0.8
    )
    subs = scheduler.submits[-3:]
    assert [s.sampling.seed for s in subs] == [7, 8, 9]
    assert len({s.request_id for s in subs}) == 3
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.prompt_tokens == 3
    assert out.usage.completion_tokens == sum(lengths[s.request_id] for s in subs)
    texts = {c.index: c.text for c in out.choices}
    assert len(set(texts.values())) == 3  # lengths 3, 4, 5
    lengths.clear()
    stream = await oai.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    got: dict[int, str] = {0: "", 1: ""}
    finished, roles, usage = set(), set(), None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.add(c.index)
            got[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert roles == finished == {0, 1}
    assert got[0] != got[1] and all(got.values())
    assert usage.completion_tokens == sum(lengths.values())


async def test_the_gateway_hashes_the_prompts_prefix_keys_for_the_scheduler(
    client: Callable[..., AsyncOpenAI], scheduler: FakeScheduler, reply_ids: list[int]
) -> None:
    """The SUBMIT carries the prompt's prefix keys, for the adapter it runs with, so the one
    scheduler does not hash every prompt itself."""
    scheduler.plan = lambda _: Plan(tokens=reply_ids)
    await client().completions.create(model=MODEL_ID, prompt=PROMPT * 20, max_tokens=4)
    sub = scheduler.submits[-1]
    assert len(sub.prompt_token_ids) > 4 * PREFIX_BLOCK
    assert sub.cache_salt == "t:alice"  # the tenant's own prefixes only (--prefix-cache-scope)
    assert sub.prefix_keys == prefix_keys(sub.adapter, sub.prompt_token_ids, salt="t:alice")
    assert sub.prefix_keys != prefix_keys(sub.adapter, sub.prompt_token_ids)
    assert len(sub.prefix_keys) == reusable_blocks(len(sub.prompt_token_ids))


async def test_a_clients_cache_salt_narrows_its_tenants_and_a_bad_one_is_a_400(
    client: Callable[..., AsyncOpenAI], scheduler: FakeScheduler, reply_ids: list[int]
) -> None:
    """vLLM's ``cache_salt``: within the tenant's salt, never instead of it."""
    scheduler.plan = lambda _: Plan(tokens=reply_ids)
    alice = client()
    await alice.completions.create(
        model=MODEL_ID, prompt=PROMPT, max_tokens=4, extra_body={"cache_salt": "conv-7"}
    )
    assert scheduler.submits[-1].cache_salt == "t:alice\x1fc:conv-7"
    for bad in ("", "a\x1fb", "x" * 257):
        with pytest.raises(BadRequestError):
            await alice.completions.create(
                model=MODEL_ID, prompt=PROMPT, max_tokens=4, extra_body={"cache_salt": bad}
            )
