"""SGLang's native ``/generate`` (the same path as LoRAX's, told apart by the body): text or token
ids, one prompt or a batch, sampling_params, lora_path, constraints, streams of the text so far.
Requests are shaped as SGLang's docs send them (``requests.post(url + "/generate", json=...)``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from loraplex.text.tokenizer import Tokenizer
from loraplex.tooling.demo import EOS_TOKEN_ID, DemoModelInfo
from tests.gateway.conftest import ALICE, REPLY_TEXT, FakeScheduler, register_adapter
from tests.gateway.test_errors import assert_error

PROMPT = "The capital of France is"
IDS = [5, 6, 7, 8]  # token ids: the fake worker's scores per position are known


async def post(gateway: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        return await http.post("/generate", json=body)


async def test_one_prompt(gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(ids, chunk=2, finish="length")
    params = {"max_new_tokens": len(ids), "temperature": 0, "top_k": 5, "min_new_tokens": 2,
              "stop": ["zz"], "sampling_seed": 4, "no_stop_trim": True}  # fmt: skip
    r = await post(gateway, {"text": PROMPT, "sampling_params": params})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == REPLY_TEXT
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": len(ids)}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (
        len(tokenizer.encode(PROMPT)),
        len(ids),
    )
    s = scheduler.submits[-1].sampling
    assert (s.temperature, s.top_k, s.min_tokens, s.stop, s.seed) == (0, 5, 2, ("zz",), 4)
    assert s.include_stop_str_in_output and s.max_tokens == len(ids)


async def test_defaults_finish_reasons_and_token_ids(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(" Paris.", add_special_tokens=False)
    scheduler.says([*ids, EOS_TOKEN_ID], chunk=2)
    r = await post(gateway, {"input_ids": tokenizer.encode(PROMPT)})
    sent = scheduler.submits[-1]
    assert sent.prompt_token_ids == tokenizer.encode(PROMPT)
    assert (sent.sampling.max_tokens, sent.sampling.temperature) == (128, 1.0)  # SGLang's
    assert r.json()["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_TOKEN_ID}


async def test_a_batch_with_n_answers_a_list(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(tokenizer.encode(REPLY_TEXT, add_special_tokens=False), chunk=2, finish="length")
    body = {"text": [PROMPT, "Hello"], "sampling_params": {"max_new_tokens": 32, "n": 2}}
    r = await post(gateway, body)
    out = r.json()
    assert isinstance(out, list) and len(out) == 4 and all(o["text"] == REPLY_TEXT for o in out)
    assert len({o["meta_info"]["id"] for o in out}) == 4


async def test_streams_send_the_text_so_far_then_done(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    scheduler.says(tokenizer.encode(REPLY_TEXT, add_special_tokens=False), chunk=2, finish="length")
    r = await post(
        gateway, {"text": PROMPT, "sampling_params": {"max_new_tokens": 32}, "stream": True}
    )
    lines = [x for x in r.text.split("\n\n") if x.strip()]
    assert lines[-1] == "data: [DONE]"
    texts = [json.loads(x[len("data: ") :])["text"] for x in lines[:-1]]
    assert len(texts) > 1 and texts[-1] == REPLY_TEXT
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # cumulative
    # SGLang's own client loop: print(output[prev:]) with prev = len(output)
    shown, prev = "", 0
    for text in texts:
        shown += text[prev:]
        prev = len(text)
    assert shown == REPLY_TEXT


async def test_lora_path_and_constraints(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    r = await post(gateway, {"text": PROMPT, "lora_path": "not-registered"})
    assert_error(r, 404)
    scheduler.says(tokenizer.encode('{"a": 1}', add_special_tokens=False), chunk=2, finish="length")
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    r = await post(gateway, {"text": PROMPT, "sampling_params": {"json_schema": schema}})
    assert r.status_code == 200
    got = scheduler.submits[-1].sampling.structured_outputs
    assert got is not None and got.kind == "json"


async def test_input_logprobs_from_logprob_start_len(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """The prompt's tokens from ``logprob_start_len`` on, the first of them unscored (null
    logprob, null top logprobs) as SGLang answers; the output's logprobs as before."""
    reply = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.says(reply, chunk=3, finish="length")
    body = {"input_ids": IDS, "return_logprob": True, "logprob_start_len": 1,
            "top_logprobs_num": 2, "return_text_in_logprobs": True}  # fmt: skip
    r = await post(gateway, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == REPLY_TEXT
    assert scheduler.submits[-1].sampling.prompt_logprobs == 2
    meta, name = out["meta_info"], lambda t: tokenizer.decode([t], False)
    assert meta["input_token_logprobs"] == [
        [None, 6, name(6)],
        [-0.25 - 2 / 64, 7, name(7)],  # the fake's scores at positions 2 and 3
        [-4.0 - 3 / 64, 8, name(8)],
    ]
    assert meta["input_top_logprobs"] == [
        None,
        [[-0.25 - 2 / 64, 7, name(7)], [-1.25 - 2 / 64, 8, name(8)]],
        [[-0.5, 9, name(9)], [-0.625, 10, name(10)]],
    ]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == reply
    assert len(meta["output_top_logprobs"]) == len(reply)

    r = await post(gateway, {**body, "logprob_start_len": 0, "return_text_in_logprobs": False})
    meta = r.json()["meta_info"]
    assert meta["input_token_logprobs"][0] == [None, 5, None]
    assert meta["input_token_logprobs"][1:] == [[-4.0 - 1 / 64, 6, None], [-0.25 - 2 / 64, 7, None], [-4.0 - 3 / 64, 8, None]]  # fmt: skip

    # -1, SGLang's default: the prompt's last token only, unscored, and nothing computed
    r = await post(gateway, {"input_ids": IDS, "return_logprob": True, "top_logprobs_num": 1})
    meta = r.json()["meta_info"]
    assert meta["input_token_logprobs"] == [[None, 8, None]] and meta["input_top_logprobs"] == [
        None
    ]
    assert scheduler.submits[-1].sampling.prompt_logprobs is None

    # streamed: every event carries them, as SGLang's cumulative meta_info does
    r = await post(gateway, {**body, "stream": True})
    lines = [x for x in r.text.split("\n\n") if x.strip()]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[len("data: ") :]) for x in lines[:-1]]
    assert len(events) > 1 and events[-1]["text"] == REPLY_TEXT
    assert all(e["meta_info"]["input_token_logprobs"][1][0] == -0.25 - 2 / 64 for e in events)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_ids": IDS, "return_logprob": True, "logprob_start_len": 4}, "logprob_start_len"),
        ({"text": PROMPT, "return_logprob": True, "logprob_start_len": -2}, "logprob_start_len"),
        (
            {"input_ids": [IDS, IDS[:2]], "return_logprob": True, "logprob_start_len": 2},
            "logprob_start_len",
        ),
        ({"text": PROMPT, "return_logprob": True, "logprob_start_len": "x"}, "logprob_start_len"),
        ({"text": PROMPT, "return_logprob": True, "top_logprobs_num": 21}, "top_logprobs_num"),
        ({"text": PROMPT, "image_data": "x.png"}, "image_data"),
        ({"text": PROMPT, "custom_logit_processor": "{}"}, "custom_logit_processor"),
        ({"text": [PROMPT, PROMPT], "lora_path": ["a", "b", "c"]}, "lora_path"),
        ({"text": PROMPT, "lora_path": ["a", "b"]}, "lora_path"),
        ({"text": PROMPT, "input_ids": [1, 2]}, "text"),
        (
            {"text": PROMPT, "sampling_params": {"max_new_tokens": 0}},
            "sampling_params.max_new_tokens",
        ),
        ({"text": PROMPT, "sampling_params": {"regex": "(ab"}}, "sampling_params.regex"),
        ({"text": PROMPT, "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
        ({"text": PROMPT, "sampling_params": {"max_new_tokens": 10**6}}, "text"),  # the context
        ({"input_ids": [[1, 2], []]}, "input_ids[1]"),
        ({"text": ["a", " "]}, "text[1]"),
    ],
)
async def test_refusals(gateway: str, scheduler: FakeScheduler, body: dict, param: str) -> None:
    r = await post(gateway, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert scheduler.submits == []


async def test_a_batch_names_one_adapter_per_prompt(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer, demo: DemoModelInfo
) -> None:
    """SGLang's ``lora_path`` list: each prompt runs with its own adapter (or the base model),
    the answers in the batch's order; a name the tenant cannot use is a 404 for the batch."""
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=30) as http:
        for info, name in zip(demo.adapters, ("sg-a", "sg-b"), strict=True):
            assert (await register_adapter(http, info.path, name, ALICE)).status_code == 201
    scheduler.says(REPLY_TEXT, chunk=2)
    prompts = ["one", "two", "three"]
    body = {"text": prompts, "lora_path": ["sg-a", None, "sg-b"], "sampling_params": {"n": 2}}
    r = await post(gateway, body)
    assert r.status_code == 200, r.text
    assert [o["text"] for o in r.json()] == [REPLY_TEXT] * 6
    sent = {tokenizer.decode(s.prompt_token_ids): s.adapter for s in scheduler.submits}
    assert sent == {"one": "alice/sg-a", "two": None, "three": "alice/sg-b"}
    assert len(scheduler.submits) == 6  # n choices of each prompt
    r = await post(gateway, {"text": prompts, "lora_path": ["sg-a", "nope", None]})
    assert_error(r, 404)
    assert len(scheduler.submits) == 6  # nothing of the refused batch was queued
