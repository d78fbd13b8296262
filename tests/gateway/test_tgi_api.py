"""LoRAX's and TGI's native API (``/generate``, ``/generate_stream``, ``/``) with real clients:
``huggingface_hub``'s ``InferenceClient.text_generation`` and lorax-client's request shapes over
httpx.  The fake scheduler plays the model (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient

from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import EOS_TOKEN_ID
from tests.gateway.conftest import ALICE, ALICE_KEY, REPLY_TEXT, FakeScheduler, Plan
from tests.gateway.test_errors import assert_error

PROMPT = "Hello, world! How are you today?"


def events(raw: str) -> list[dict[str, Any]]:
    lines = [line for line in raw.split("\n\n") if line.strip()]
    assert all(line.startswith("data:") for line in lines), raw  # and no [DONE]
    return [json.loads(line[len("data:") :]) for line in lines]


async def test_generate_with_details(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(ids, chunk=2, finish="length")
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": len(ids), "details": True}}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["generated_text"] == REPLY_TEXT
    details = out["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == len(ids)
    assert details["prompt_tokens"] == len(tokenizer.encode(PROMPT))  # LoRAX's field
    assert [t["id"] for t in details["tokens"]] == ids
    assert "".join(t["text"] for t in details["tokens"]) == REPLY_TEXT
    assert not any(t["special"] for t in details["tokens"])
    sent = scheduler.submits[-1]
    assert sent.sampling.temperature == 0 and sent.sampling.max_tokens == len(ids)  # greedy
    assert sent.sampling.logprobs == 0  # each token's logprob, for details
    assert sent.adapter is None


async def test_sampling_and_finish_reasons(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(" Yes.", add_special_tokens=False)
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        scheduler.says([*ids, EOS_TOKEN_ID], chunk=2)
        params = {"do_sample": True, "temperature": 0.7, "top_k": 5, "seed": 9, "details": True,
                  "return_full_text": True, "stop": ["zz"], "truncate": 4}  # fmt: skip
        r = await http.post("/generate", json={"inputs": PROMPT, "parameters": params})
        assert r.status_code == 200, r.text
        s = scheduler.submits[-1].sampling
        assert (s.temperature, s.top_k, s.seed, s.stop) == (0.7, 5, 9, ("zz",))
        assert len(scheduler.submits[-1].prompt_token_ids) == 4
        out = r.json()
        assert out["generated_text"].startswith(PROMPT + " Yes.")
        assert out["details"]["finish_reason"] == "eos_token" and out["details"]["seed"] == 9
        assert out["details"]["tokens"][-1]["special"]
        scheduler.says(tokenizer.encode(" Stop here", add_special_tokens=False), chunk=2)
        r = await http.post("/generate", json={"inputs": PROMPT, "parameters": {"details": True}})
        assert r.json()["details"]["finish_reason"] == "stop_sequence"
        assert "details" not in (await http.post("/generate", json={"inputs": PROMPT})).json()


async def test_generate_stream_events_add_up(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(ids, chunk=2, finish="length")
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(
            "/generate_stream", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 32}}
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert [e["token"]["id"] for e in got] == ids
    assert [e["index"] for e in got] == list(range(len(ids)))
    assert "".join(e["token"]["text"] for e in got) == REPLY_TEXT
    assert all(e["generated_text"] is None for e in got[:-1])
    assert got[-1]["generated_text"] == REPLY_TEXT
    assert got[-1]["details"]["finish_reason"] == "length"


async def test_huggingface_hub_text_generation(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """The official client of TGI endpoints, streamed and not (it posts to ``/``)."""
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(ids, chunk=2, finish="length")
    client = InferenceClient(base_url=gateway, api_key=ALICE_KEY, timeout=10)

    def run() -> tuple[Any, list[Any]]:
        whole = client.text_generation(PROMPT, max_new_tokens=32, details=True)
        streamed = list(
            client.text_generation(PROMPT, max_new_tokens=32, stream=True, details=True)
        )
        return whole, streamed

    whole, streamed = await asyncio.to_thread(run)
    assert whole.generated_text == REPLY_TEXT
    assert whole.details.finish_reason == "length" and len(whole.details.tokens) == len(ids)
    assert "".join(s.token.text for s in streamed) == REPLY_TEXT
    assert streamed[-1].generated_text == REPLY_TEXT


async def test_typical_p_samples(gateway: str, scheduler: FakeScheduler) -> None:
    """TGI: typical_p alone turns sampling on, and reaches the workers."""
    scheduler.says(REPLY_TEXT)
    body = {"inputs": PROMPT, "parameters": {"typical_p": 0.6, "max_new_tokens": 4}}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        assert (await http.post("/generate", json=body)).status_code == 200
    sent = scheduler.submits[-1].sampling
    assert sent.typical_p == 0.6 and sent.temperature == 1.0


async def test_decoder_input_details_score_the_prompt(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """TGI's ``details.prefill``: every prompt token, the first unscored; in a stream a 400."""
    scheduler.says(REPLY_TEXT, chunk=2, finish="length")
    client = InferenceClient(base_url=gateway, api_key=ALICE_KEY, timeout=10)
    out = await asyncio.to_thread(
        client.text_generation, PROMPT, max_new_tokens=8, details=True, decoder_input_details=True
    )
    prompt_ids = tokenizer.encode(PROMPT)
    assert [t.id for t in out.details.prefill] == prompt_ids
    assert out.details.prefill[0].logprob is None
    assert all(isinstance(t.logprob, float) for t in out.details.prefill[1:])
    assert scheduler.submits[-1].sampling.prompt_logprobs == 0
    body = {"inputs": PROMPT, "parameters": {"details": True, "decoder_input_details": True}}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/generate_stream", json=body)
        assert_error(r, 400, param="parameters.decoder_input_details")
        plain = await http.post("/generate", json={**body, "parameters": {"details": True}})
    assert plain.json()["details"]["prefill"] == []  # not asked for: not computed
    assert scheduler.submits[-1].sampling.prompt_logprobs is None


async def test_an_adapter_id_is_a_registered_adapter_name(
    gateway: str, scheduler: FakeScheduler
) -> None:
    body = {"inputs": PROMPT, "parameters": {"adapter_id": "org/not-registered"}}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        assert_error(await http.post("/generate", json=body), 404)
    assert scheduler.submits == []


async def test_the_root_route_answers_a_list_as_tgi_does(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """lorax-client's ``generate`` posts to ``/`` and reads ``payload[0]``."""
    scheduler.says(tokenizer.encode(REPLY_TEXT, add_special_tokens=False), chunk=2, finish="length")
    body = {
        "inputs": PROMPT,
        "parameters": {"max_new_tokens": 32, "ignore_eos_token": True},
        "stream": False,
    }
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/", json=body)
        assert r.status_code == 200 and r.json()[0]["generated_text"] == REPLY_TEXT
        assert scheduler.submits[-1].sampling.ignore_eos
        streamed = await http.post("/", json={**body, "stream": True})
        assert events(streamed.text)[-1]["generated_text"] == REPLY_TEXT


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"return_k_alternatives": 50}, "parameters.return_k_alternatives"),
        ({"best_of": 2}, "parameters.best_of"),
        ({"watermark": True}, "parameters.watermark"),
        ({"top_n_tokens": 5}, "parameters.top_n_tokens"),
        ({"top_n_tokens": -1}, "parameters.top_n_tokens"),
        ({"typical_p": 1.5}, "parameters.typical_p"),
        ({"typical_p": 0}, "parameters.typical_p"),
        ({"adapter_source": "s3"}, "parameters.adapter_source"),
        ({"grammar": {"type": "xml", "value": "x"}}, "parameters.grammar"),
        ({"grammar": {"type": "json", "value": {"type": "no-such"}}}, "parameters.grammar"),
        ({"response_format": {"type": "text"}}, "parameters.response_format"),
        ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
        ({"max_new_tokens": 10**6}, "inputs"),  # the context is too short for it
        ({"do_sample": True, "temperature": -1}, "parameters.temperature"),
    ],
)
async def test_refusals_name_the_tgi_field(
    gateway: str, scheduler: FakeScheduler, parameters: dict, param: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/generate", json={"inputs": PROMPT, "parameters": parameters})
    assert_error(r, 400, param=param)
    assert scheduler.submits == []


async def test_a_stream_that_fails_ends_with_a_tgi_error_event(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2, finish=None, error=(500, "boom"))
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post(
            "/generate_stream", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 32}}
        )
    got = events(r.text)
    assert got[-1]["error"] and got[-1]["error_type"]
    assert "".join(e["token"]["text"] for e in got[:-1]) == REPLY_TEXT


async def test_best_of_returns_the_answer_with_the_best_mean_logprob(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """Three sampled answers (the fake scores a token by its position: the first is likely, the
    second not): the one-token answer has the best mean, then the three-token one."""
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    lengths = {"": 3, "-1": 1, "-2": 2}  # by the choice's request-id suffix
    scheduler.plan = lambda req: Plan(
        tokens=ids[: lengths[req.request_id[len(scheduler.submits[0].request_id) :]]],
        finish_reason="length",
    )
    params = {"best_of": 3, "do_sample": True, "details": True, "max_new_tokens": 3}
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        r = await http.post("/generate", json={"inputs": PROMPT, "parameters": params})
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(scheduler.submits) == 3
        assert out["generated_text"] == tokenizer.decode(ids[:1])
        assert [t["id"] for t in out["details"]["tokens"]] == ids[:1]
        others = out["details"]["best_of_sequences"]
        assert [s["generated_text"] for s in others] == [
            tokenizer.decode(ids[:3]),
            tokenizer.decode(ids[:2]),
        ]
        assert [len(s["tokens"]) for s in others] == [3, 2]
        assert {s["finish_reason"] for s in others} == {"length"}
        assert [s["generated_tokens"] for s in others] == [3, 2]
        # without details: the best answer alone
        params["details"] = False
        r = await http.post("/generate", json={"inputs": PROMPT, "parameters": params})
        assert r.json() == {"generated_text": tokenizer.decode(ids[:1])}


@pytest.mark.parametrize(
    ("parameters", "stream"),
    [
        ({"best_of": 2}, False),  # greedy
        ({"best_of": 2, "do_sample": True, "seed": 3}, False),
        ({"best_of": 2, "do_sample": True}, True),
        ({"best_of": 0, "do_sample": True}, False),
        ({"best_of": 17, "do_sample": True}, False),
    ],
)
async def test_best_of_refusals_are_tgis(
    gateway: str, scheduler: FakeScheduler, parameters: dict, stream: bool
) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        body = {"inputs": PROMPT, "parameters": parameters, "stream": stream}
        r = await http.post("/generate_stream" if stream else "/generate", json=body)
    assert_error(r, 400, param="parameters.best_of")
    assert scheduler.submits == []
