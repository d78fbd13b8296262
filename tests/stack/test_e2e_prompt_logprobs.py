"""End to end on the disaggregated stack: vLLM's ``prompt_logprobs`` and SGLang's input logprobs
are the offline engine's ``prompt_logprobs`` for the same prompt, scored by the prefill worker and
carried to the gateway with the first token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loraplex import LLM, SamplingParams
from loraplex.token_logprobs import TokenLogprobs
from tests.stack.e2e_common import PROMPTS, offline_llm

K = 3


@pytest.fixture(scope="module")
def llm(disagg_stack) -> LLM:  # type: ignore[no-untyped-def]
    return offline_llm(disagg_stack)


def offline_scores(llm: LLM, prompt: list[int], lora: str | None, k: int) -> list[Any]:
    """The offline engine's prompt logprobs: None, then one ``TokenLogprobs`` per token 1.."""
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=k)
    return llm.generate(prompt, params, lora=lora)[0].prompt_logprobs  # type: ignore[return-value]


def assert_vllm_shape(got: list[Any], want: list[TokenLogprobs | None], k: int, tok) -> None:  # type: ignore[no-untyped-def]
    """vLLM's map per token: the token itself first (its rank in the vocabulary), then the k
    most likely (ranks 1..k), each with its logprob and text."""
    assert len(got) == len(want) and got[0] is None and want[0] is None
    for scores, w in zip(got[1:], want[1:], strict=True):
        assert w is not None
        keys = [int(t) for t in scores]
        top_ids = [t for t, _ in w.top]
        assert keys[0] == w.token_id and keys[1:] == [t for t in top_ids if t != w.token_id]
        mine = scores[str(w.token_id)]
        assert mine["logprob"] == pytest.approx(w.logprob, abs=1e-4)
        assert mine["rank"] == w.rank and w.rank >= 1
        for rank, (token_id, logprob) in enumerate(w.top[:k], start=1):
            s = scores[str(token_id)]
            assert s["logprob"] == pytest.approx(logprob, abs=1e-4) and s["rank"] == rank
        assert all(s["decoded_token"] == tok.decode([int(t)], False) for t, s in scores.items())


@pytest.mark.parametrize("which", [0, 1])  # an adapter, then the base model
def test_prompt_logprobs_equal_the_offline_engines(client, llm, model_id, loras, which):
    prompt, lora = PROMPTS[which], loras[which]
    want, tok = offline_scores(llm, prompt, lora, K), llm.tokenizer
    resp = client.completions.create(
        model=lora or model_id, prompt=prompt, max_tokens=3, temperature=0,
        extra_body={"prompt_logprobs": K, "ignore_eos": True},
    )  # fmt: skip
    assert_vllm_shape(resp.choices[0].prompt_logprobs, want, K, tok)
    assert resp.choices[0].logprobs is None and resp.usage.completion_tokens == 3

    # echo + logprobs at the same time: one computation, each view with its own count
    both = client.completions.create(
        model=lora or model_id, prompt=prompt, max_tokens=0, echo=True, logprobs=1,
        extra_body={"prompt_logprobs": K},
    )  # fmt: skip
    choice = both.choices[0]
    assert_vllm_shape(choice.prompt_logprobs, want, K, tok)
    echoed = choice.logprobs.token_logprobs
    assert echoed[0] is None
    assert echoed[1:] == pytest.approx([w.logprob for w in want[1:]], abs=1e-4)
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs[1:])


def test_chat_prompt_logprobs_equal_the_offline_engines(client, llm, loras):
    messages = [{"role": "user", "content": "hello there"}]
    ids = llm.tokenizer.encode_chat(messages, True)
    want = offline_scores(llm, ids, loras[0], 2)
    chat = client.chat.completions.create(
        model=loras[0], messages=messages, max_tokens=2, temperature=0,
        extra_body={"prompt_logprobs": 2},
    )  # fmt: skip
    assert chat.usage.prompt_tokens == len(ids)
    assert_vllm_shape(chat.prompt_logprobs, want, 2, llm.tokenizer)


def test_sglang_input_logprobs_equal_the_offline_engines(disagg_stack, llm, loras):
    """From ``logprob_start_len`` on; SGLang leaves the first of them unscored."""
    prompt, start = PROMPTS[2], 3
    want = offline_scores(llm, prompt, loras[2], 2)
    body = {"input_ids": prompt, "lora_path": loras[2], "return_logprob": True,
            "logprob_start_len": start, "top_logprobs_num": 2,
            "sampling_params": {"temperature": 0, "max_new_tokens": 2}}  # fmt: skip
    r = httpx.post(f"{disagg_stack.urls['gateway']}/generate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    got, tops = meta["input_token_logprobs"], meta["input_top_logprobs"]
    assert [t for _, t, _ in got] == prompt[start:] and got[0][0] is None and tops[0] is None
    assert [lp for lp, _, _ in got[1:]] == pytest.approx(
        [w.logprob for w in want[start + 1 :]], abs=1e-4
    )
    assert [[t for _, t, _ in top] for top in tops[1:]] == [
        [t for t, _ in w.top] for w in want[start + 1 :]
    ]
    too_far = httpx.post(
        f"{disagg_stack.urls['gateway']}/generate",
        json={**body, "logprob_start_len": len(prompt)},
        timeout=30,
    )
    assert too_far.status_code == 400 and too_far.json()["error"]["param"] == "logprob_start_len"


def test_tgi_decoder_input_details_equal_the_offline_engines(disagg_stack, llm, loras):  # type: ignore[no-untyped-def]
    text = "The quick brown fox"
    prompt = llm.tokenizer.encode(text)
    want = offline_scores(llm, prompt, loras[1], 0)
    body = {"inputs": text, "parameters": {"adapter_id": loras[1], "max_new_tokens": 2,
            "details": True, "decoder_input_details": True}}  # fmt: skip
    r = httpx.post(f"{disagg_stack.urls['gateway']}/generate", json=body, timeout=30)
    assert r.status_code == 200, r.text
    prefill = r.json()["details"]["prefill"]
    assert [t["id"] for t in prefill] == prompt and prefill[0]["logprob"] is None
    assert [t["logprob"] for t in prefill[1:]] == pytest.approx(
        [w.logprob for w in want[1:]], abs=1e-4
    )
