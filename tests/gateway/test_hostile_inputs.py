"""Hostile request values and bytes (issue 13): sampling values outside vLLM's ranges, lone
surrogates, NUL and invalid UTF-8 get a 400 naming the field, nothing is queued, and the very
same keep-alive connection then serves a normal request (a 500 used to close it)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALICE, MODEL_ID, FakeScheduler, Plan
from tests.gateway.test_errors import CHAT, COMPLETIONS, assert_error, completion

JSON = {"content-type": "application/json"}
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 8, **kw}


def same_connection(a: httpx.Response, b: httpx.Response) -> bool:
    return a.extensions["network_stream"] is b.extensions["network_stream"]


async def refused_then_served(
    gateway: str,
    scheduler: FakeScheduler,
    path: str,
    body: bytes,
    param: str | None,
    says: str = "",
    code: str | None = "invalid_value",
) -> None:
    """``body`` is a 400 naming ``param``; nothing is queued; the same connection then serves
    a normal completion."""
    scheduler.plan = lambda _: Plan(tokens=[10, 11])
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, limits=limits) as http:
        bad = await http.post(path, content=body, headers=JSON)
        err = assert_error(bad, 400, code=code, param=param, says=says)
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert scheduler.submits == []
        good = await http.post(COMPLETIONS, json=completion())
        assert good.status_code == 200, good.text
        assert same_connection(bad, good)  # kept alive (a 500 closes it)
    assert len(scheduler.submits) == 1


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# ---- sampling values outside vLLM's ranges --------------------------------------------------
BAD_SAMPLING = [
    (completion(temperature=-1e-300), "temperature", "temperature must be >= 0"),
    (b'{"model": "demo-base", "prompt": "x", "temperature": 1e400}', "temperature", ""),
    (completion(top_p=-0.1), "top_p", "(0, 1]"),
    (completion(top_p=1.0000001), "top_p", "(0, 1]"),
    (completion(top_k=2**31 + 1), "top_k", ""),
    (completion(min_p=-0.01), "min_p", "min_p must be in [0, 1]"),
    (completion(min_p=1.5), "min_p", "[0, 1]"),
    (chat(min_p="high"), "min_p", ""),
    (completion(presence_penalty=2.0001), "presence_penalty", "[-2, 2]"),
    (chat(frequency_penalty=-2.5), "frequency_penalty", "[-2, 2]"),
    (completion(repetition_penalty=-1), "repetition_penalty", "> 0"),
    (
        b'{"model": "demo-base", "prompt": "x", "repetition_penalty": Infinity}',
        "repetition_penalty",
        "",
    ),
    (completion(logit_bias={"5": 100.5}), "logit_bias", "[-100, 100]"),
    (chat(logit_bias={"5": -101}), "logit_bias", "[-100, 100]"),
    (completion(logit_bias={"abc": 1}), "logit_bias", "not a token id"),
    (completion(logit_bias={"-1": 1}), "logit_bias", "not a token id"),
    (completion(logit_bias={" 5": 1}), "logit_bias", "not a token id"),
    (completion(logit_bias={"99999": 1}), "logit_bias", "vocabulary"),
    (completion(logit_bias={str(i): 1 for i in range(301)}), "logit_bias", "at most 300"),
    (completion(logit_bias={"5": "up"}), "logit_bias.5", ""),
    (completion(logit_bias=[5]), "logit_bias", ""),
    (completion(seed=2**64), "seed", ""),
    (completion(seed=-(2**63) - 1), "seed", ""),
    (completion(max_tokens=10**30), "prompt", "maximum context length"),
    (chat(max_tokens=0), "max_tokens", "at least 1"),
]


@pytest.mark.parametrize(
    ("body", "param", "says"), BAD_SAMPLING, ids=[p for _, p, _ in BAD_SAMPLING]
)
async def test_sampling_values_outside_vllm_ranges_are_400(
    gateway: str, scheduler: FakeScheduler, body: dict | bytes, param: str, says: str
) -> None:
    path = CHAT if isinstance(body, dict) and "messages" in body else COMPLETIONS
    data = body if isinstance(body, bytes) else raw(body)
    code = "context_length_exceeded" if "context" in says else None
    await refused_then_served(gateway, scheduler, path, data, param, says, code=code)


async def test_extreme_accepted_values_reach_the_wire_as_vllm_would_run_them(
    gateway: str, scheduler: FakeScheduler
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[10, 11])
    extreme = {
        "temperature": 1e-300,  # raised to 0.01, as vLLM does
        "repetition_penalty": 1e-300,
        "top_k": 0,  # off, like -1
        "min_p": 1.0,
        "logit_bias": {"5": -100, "7": 100, "0": 0.5},
        "seed": 2**64 - 1,
    }
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        assert (await http.post(COMPLETIONS, json=completion(**extreme))).status_code == 200
        assert (await http.post(CHAT, json=chat(temperature=0, min_p=0.1))).status_code == 200
    s = scheduler.submits[0].sampling
    assert (s.temperature, s.repetition_penalty, s.top_k, s.min_p) == (0.01, 1e-300, -1, 1.0)
    assert s.logit_bias == {5: -100.0, 7: 100.0, 0: 0.5}  # token ids as ints, on the wire too
    assert s.seed == 2**64 - 1
    c = scheduler.submits[1].sampling
    assert (c.temperature, c.min_p, c.logit_bias) == (0.0, 0.1, None)


# ---- bytes and Unicode -----------------------------------------------------------------------
SURROGATE = "\\ud800"  # as a JSON escape: a lone surrogate once decoded
BAD_TEXT = [
    (COMPLETIONS, b'{"model": "demo-base", "prompt": "a\\ud800b"}', "prompt"),
    (COMPLETIONS, b'{"model": "demo-base", "prompt": ["x\\udfff"]}', "prompt.0"),
    (COMPLETIONS, b'{"model": "demo-base", "prompt": "x", "stop": ["ok", "\\udc00"]}', "stop.1"),
    (COMPLETIONS, b'{"model": "demo-base", "prompt": "x", "stop": "\\udc00"}', "stop"),
    (COMPLETIONS, b'{"model": "demo-\\ud800base", "prompt": "x"}', "model"),
    (COMPLETIONS, b'{"model": "demo-base", "prompt": "x", "user": "\\ud800"}', "user"),
    (
        COMPLETIONS,
        b'{"model": "demo-base", "prompt": "x", "guided_regex": "\\udbff"}',
        "guided_regex",
    ),
    (COMPLETIONS, b'{"model": "demo-base", "prompt": "x", "\\ud800": 1}', "\\ud800"),
    (
        CHAT,
        b'{"model": "demo-base", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "messages.0.content",
    ),
    (
        CHAT,
        b'{"model": "demo-base", "messages": [{"role": "user", "content": '
        b'[{"type": "text", "text": "ok"}, {"type": "text", "text": "\\ude00"}]}]}',
        "messages.0.content.1.text",
    ),
    (
        CHAT,
        b'{"model": "demo-base", "messages": [{"role": "\\ud800", "content": "x"}]}',
        "messages.0.role",
    ),
    ("/tokenize", b'{"prompt": "\\ud800"}', "prompt"),
    ("/tokenize", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    ("/detokenize", b'{"model": "\\ud800", "tokens": [5]}', "model"),
    ("/v1/load_lora_adapter", b'{"lora_name": "\\ud800", "lora_path": "/x"}', "lora_name"),
    ("/v1/unload_lora_adapter", b'{"lora_name": "\\ud800"}', "lora_name"),
    ("/v1/adapters", b'{"name": "ok", "path": "/x\\udc80"}', "path"),
    # NUL: refused in identifiers and paths, kept in generation text (see below)
    (COMPLETIONS, b'{"model": "demo-base\\u0000", "prompt": "x"}', "model"),
    ("/v1/load_lora_adapter", b'{"lora_name": "a", "lora_path": "/x\\u0000y"}', "lora_path"),
    ("/v1/adapters", b'{"name": "a\\u0000", "path": "/x"}', "name"),
    ("/v1/adapters", b'{"name": "a", "path": "/adapters/x\\u0000"}', "path"),
]


@pytest.mark.parametrize(
    ("path", "body", "param"), BAD_TEXT, ids=[f"{p}:{q}" for p, _, q in BAD_TEXT]
)
async def test_lone_surrogates_and_nul_are_400_naming_the_field(
    gateway: str, scheduler: FakeScheduler, path: str, body: bytes, param: str
) -> None:
    says = "NUL" if b"\\u0000" in body else "lone surrogate"
    await refused_then_served(gateway, scheduler, path, body, param, says)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "demo-base", "prompt": "a\xffb"}',  # not UTF-8
        b'{"model": "demo-base", "prompt": "a\xed\xa0\x80b"}',  # a UTF-8-encoded surrogate
        b'{"model": "demo-base", "prompt": "a\xc3"}',  # truncated sequence
        b'{"model": "demo-\xc0\xafbase", "prompt": "x"}',  # overlong encoding
    ],
)
async def test_invalid_utf8_is_400(gateway: str, scheduler: FakeScheduler, body: bytes) -> None:
    await refused_then_served(
        gateway, scheduler, COMPLETIONS, body, None, "not valid UTF-8", code="invalid_encoding"
    )


async def test_nul_in_generation_text_and_surrogate_pairs_are_served(
    gateway: str, scheduler: FakeScheduler
) -> None:
    # vLLM tokenizes a NUL inside text like any other character; an escaped surrogate *pair*
    # is one valid character (U+1F600)
    scheduler.plan = lambda _: Plan(tokens=[10, 11])
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        for body in (
            b'{"model": "demo-base", "prompt": "a\\u0000b", "stop": ["\\u0000"]}',
            b'{"model": "demo-base", "prompt": "smile \\ud83d\\ude00"}',
            b'{"model": "demo-base", "messages": [{"role": "user", "content": "a\\u0000"}]}',
        ):
            path = CHAT if b"messages" in body else COMPLETIONS
            r = await http.post(path, content=body, headers=JSON)
            assert r.status_code == 200, r.text
        r = await http.post(
            "/tokenize", content=b'{"prompt": "a\\u0000\\ud83d\\ude00"}', headers=JSON
        )
        assert r.status_code == 200 and r.json()["count"] > 2
    assert len(scheduler.submits) == 3
    assert "\x00" in scheduler.submits[0].sampling.stop[0]


async def test_deeply_nested_json_is_400(gateway: str, scheduler: FakeScheduler) -> None:
    # too deep for Python's json (RecursionError): the scan gives up, the route answers 400
    deep = b"[" * 50_000 + b'"\\ud800"' + b"]" * 50_000
    body = b'{"model": "demo-base", "prompt": "x", "a": ' + deep + b"}"
    await refused_then_served(gateway, scheduler, COMPLETIONS, body, None, code=None)
