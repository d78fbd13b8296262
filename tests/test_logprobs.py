"""Token logprobs (OpenAI ``logprobs``) against HF + PEFT's log-softmax, on both serving paths."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.errors import InvalidRequestError
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.hf_reference import HFReference
from tests.tiny_models import write_model_and_adapters

SPEC = TinyModelSpec(arch="qwen2", seed=51, num_kv_heads=1)
PROMPTS = [[5, 17, 300, 42, 7], [900, 12, 13, 14, 15, 16, 17, 18, 19]]
LORAS = ["a", None]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = {"rank": 8, "alpha": 16, "targets": ALL_MODULES, "seed": 1}
    return write_model_and_adapters(tmp_path_factory.mktemp("logprobs"), SPEC, {"a": adapter})


def test_greedy_logprobs_match_hf_log_softmax(setup) -> None:
    model, paths = setup
    ref = HFReference(model, paths)
    llm = LLM(model, dtype="float32", device="cpu", max_lora_rank=8, block_size=4)
    llm.add_lora("a", paths["a"])
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3)
    outs = llm.generate(PROMPTS, params, lora=LORAS)
    for out, prompt, lora in zip(outs, PROMPTS, LORAS, strict=True):
        tokens, logits = ref.greedy(prompt, lora, 5)
        assert out.token_ids == tokens and len(out.logprobs) == 5
        for lp, tok, row in zip(out.logprobs, tokens, logits, strict=True):
            want = row.log_softmax(-1)
            assert lp.token_id == tok
            assert lp.logprob == pytest.approx(float(want[tok]), abs=1e-4)
            top_lp, top_ids = want.topk(3)
            assert [t for t, _ in lp.top] == top_ids.tolist()
            assert [v for _, v in lp.top] == pytest.approx(top_lp.tolist(), abs=1e-4)
            assert lp.top[0][0] == tok  # greedy: the chosen token is the most likely


def test_logprobs_are_of_the_raw_distribution_and_only_when_asked(setup) -> None:
    """Sampled at temperature 1.5 with a repetition penalty, the first token's logprob is still
    the model's own log-softmax (as vLLM reports by default); no logprobs unless asked."""
    model, paths = setup
    raw = HFReference(model, paths)._logits(PROMPTS[0], None).log_softmax(-1)
    llm = LLM(model, dtype="float32", device="cpu", block_size=4)
    hot = SamplingParams(temperature=1.5, seed=3, max_tokens=4, logprobs=0, repetition_penalty=2)
    plain = SamplingParams(temperature=0, max_tokens=4)
    a, c = llm.generate([PROMPTS[0]] * 2, [hot, plain])
    assert c.logprobs is None
    assert len(a.logprobs) == 4 and all(lp.top == () for lp in a.logprobs)
    first = a.logprobs[0]
    assert first.token_id == a.token_ids[0]
    assert first.logprob == pytest.approx(float(raw[first.token_id]), abs=1e-4)


def test_disaggregated_first_token_keeps_its_logprobs(setup) -> None:
    model, _ = setup
    make = lambda: LLM(model, dtype="float32", device="cpu", block_size=4).engine  # noqa: E731
    prefill, decode, whole = make(), make(), make()
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=2)
    prefill.add_request("r", PROMPTS[1], params, prefill_only=True)
    (out,) = prefill.step()
    assert decode.reserve_blocks("r", out.handoff.num_tokens)
    first = decode.inject(
        "r", PROMPTS[1], params, None, out.handoff.first_token, out.handoff.payload,
        first_logprobs=out.handoff.first_logprobs,
    )  # fmt: skip
    got = list(first.logprobs)
    while decode.has_unfinished():
        for o in decode.step():
            got += o.logprobs
    whole.add_request("r", PROMPTS[1], params)
    want = []
    while whole.has_unfinished():
        for o in whole.step():
            want += o.logprobs
    assert [g.token_id for g in got] == [w.token_id for w in want]
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-5)


def test_logprobs_range() -> None:
    for bad in (-1, 21):
        with pytest.raises(InvalidRequestError):
            SamplingParams(logprobs=bad)
