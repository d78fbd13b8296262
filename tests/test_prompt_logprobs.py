"""Prompt logprobs (vLLM ``prompt_logprobs``, OpenAI ``echo`` + ``logprobs``) against HF + PEFT.

Every prompt token after the first gets the log-softmax of the logits at the position before it,
whether the prompt is prefilled at once, in chunks, after a preemption, next to cached prefixes,
or on a prefill worker that hands the request over.
"""

from __future__ import annotations

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.logprobs import TokenLogprobs
from loraplex.errors import InvalidRequestError
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, write_model_and_adapters

SPEC = TinyModelSpec(arch="llama", seed=61, num_kv_heads=2)
PROMPTS = [
    [5, 17, 300, 42, 7, 99, 123, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
    [900, 12, 33],
    [250],
]
LORAS = ["a", None, "a"]
K = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = {"rank": 8, "alpha": 16, "targets": ALL_MODULES, "seed": 2}
    return write_model_and_adapters(
        tmp_path_factory.mktemp("prompt_logprobs"), SPEC, {"a": adapter}
    )


@pytest.fixture(scope="module")
def want(setup) -> list[torch.Tensor]:
    """HF + PEFT log-softmax [len(prompt), vocab] of each prompt."""
    model, paths = setup
    ref = HFReference(model, paths)
    return [ref.all_logits(p, lora).log_softmax(-1) for p, lora in zip(PROMPTS, LORAS, strict=True)]


def _llm(setup, **kw) -> LLM:
    model, paths = setup
    return llm_with_adapters(
        model, paths, dtype="float32", device="cpu", max_lora_rank=8, block_size=4, **kw
    )


def _assert_matches(got: list[TokenLogprobs | None], prompt: list[int], lp: torch.Tensor) -> None:
    assert len(got) == len(prompt) and got[0] is None
    for pos in range(1, len(prompt)):
        entry, row = got[pos], lp[pos - 1]
        assert entry.token_id == prompt[pos]
        assert entry.logprob == pytest.approx(float(row[prompt[pos]]), abs=1e-4)
        value = float(row[prompt[pos]])  # vLLM's rank: tokens at least as likely, itself too
        assert int((row > value + 1e-4).sum()) < entry.rank <= int((row >= value - 1e-4).sum())
        top_lp, top_ids = row.topk(K)
        assert [t for t, _ in entry.top] == top_ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(top_lp.tolist(), abs=1e-4)


PARAMS = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, prompt_logprobs=K)


def test_prompt_logprobs_match_hf_in_a_mixed_batch(setup, want) -> None:
    outs = _llm(setup).generate(PROMPTS, PARAMS, lora=LORAS)
    for out, prompt, lp in zip(outs, PROMPTS, want, strict=True):
        _assert_matches(out.prompt_logprobs, prompt, lp)
        assert out.logprobs is None  # generated-token logprobs are a separate option


def test_chunked_prefill_scores_every_prompt_token_once(setup, want) -> None:
    """A 21-token prompt prefilled 8 tokens at a time (3 chunks) next to short prompts."""
    llm = _llm(setup, max_num_batched_tokens=8)
    outs = llm.generate(PROMPTS, PARAMS, lora=LORAS)
    for out, prompt, lp in zip(outs, PROMPTS, want, strict=True):
        _assert_matches(out.prompt_logprobs, prompt, lp)


def test_cached_prefixes_are_recomputed_for_prompt_logprobs(setup, want) -> None:
    """A cached prefix has no logits: a request asking for prompt logprobs computes its whole
    prompt (and still caches it), the others keep reusing the cache."""
    llm = _llm(setup)
    sched = llm.engine.scheduler
    plain = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    first = llm.generate(PROMPTS[0], plain, lora="a")[0]
    hits = sched.prefix_hit_tokens
    scored = llm.generate(PROMPTS[0], PARAMS, lora="a")[0]
    assert sched.prefix_hit_tokens == hits
    _assert_matches(scored.prompt_logprobs, PROMPTS[0], want[0])
    assert scored.token_ids == first.token_ids
    again = llm.generate(PROMPTS[0], plain, lora="a")[0]
    assert sched.prefix_hit_tokens > hits and again.token_ids == first.token_ids
    assert first.prompt_logprobs is None and again.prompt_logprobs is None


def test_preempted_requests_report_prompt_logprobs_once(setup, want, preemptions) -> None:
    # 12 blocks of 4 tokens: the three prompts growing by 20 tokens each cannot all stay resident.
    llm = _llm(setup, num_kv_blocks=12, max_model_len=44, enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, prompt_logprobs=K)
    outs = llm.generate(PROMPTS, params, lora=LORAS)
    assert preemptions, "the small cache should force a preemption"
    for out, prompt, lp in zip(outs, PROMPTS, want, strict=True):
        _assert_matches(out.prompt_logprobs, prompt, lp)


def test_prompt_logprobs_travel_with_the_handover(setup, want) -> None:
    prefill, decode = _llm(setup).engine, _llm(setup).engine
    prefill.add_request("r", PROMPTS[0], PARAMS, lora="a", prefill_only=True)
    (out,) = prefill.step()
    assert out.prompt_logprobs is not None and out.handoff.prompt_logprobs is not None
    assert decode.reserve_blocks("r", out.handoff.num_tokens)
    first = decode.inject(
        "r", PROMPTS[0], PARAMS, "a", out.handoff.first_token, out.handoff.payload,
        prompt_logprobs=out.handoff.prompt_logprobs,
    )  # fmt: skip
    _assert_matches([None, *first.prompt_logprobs], PROMPTS[0], want[0])
    while decode.has_unfinished():
        assert all(o.prompt_logprobs is None for o in decode.step())


def test_prompt_logprobs_range() -> None:
    for bad in (-1, 21):
        with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
            SamplingParams(prompt_logprobs=bad)
