"""Bad requests fail with typed errors and leave the engine usable: over-long, empty and
out-of-vocabulary prompts, unknown adapters, duplicate ids, invalid sampling parameters,
bad engine options, and failures in the middle of a batch or with queued requests.
"""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.errors import AdapterError, AdapterNotFoundError, CapacityError, InvalidRequestError
from tests.bad_inputs.helpers import MAX_LEN, OPTS, SPEC


def test_prompt_at_context_length_is_rejected(llm):
    with pytest.raises(InvalidRequestError, match=str(MAX_LEN)):
        llm.generate([list(range(10, 10 + MAX_LEN))], SamplingParams(max_tokens=1))
    assert not llm.engine.has_unfinished()


def test_prompt_one_below_context_gets_one_token(llm):
    out = llm.generate(
        [list(range(10, 10 + MAX_LEN - 1))], SamplingParams(temperature=0.0, max_tokens=5)
    )
    assert len(out[0].token_ids) == 1
    assert out[0].finish_reason == "length"


@pytest.mark.parametrize("prompt", [[], ""])
def test_empty_prompt(llm, prompt):
    if prompt == "":
        # the tokenizer adds BOS, so an empty string is a one-token prompt and is accepted
        out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=1))
        assert len(out[0].token_ids) == 1
        return
    with pytest.raises(InvalidRequestError, match="at least one token"):
        llm.engine.add_request("empty", prompt, SamplingParams())
    with pytest.raises(InvalidRequestError):
        llm.generate([prompt], SamplingParams())
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("bad", [[5, SPEC.vocab_size], [-1, 5], [10**9]])
def test_token_id_out_of_range(llm, bad):
    with pytest.raises(InvalidRequestError, match=str(SPEC.vocab_size)):
        llm.engine.add_request("oob", bad, SamplingParams())
    assert llm.engine.scheduler.find("oob") is None


def test_unknown_adapter(llm):
    with pytest.raises(AdapterNotFoundError, match="nope"):
        llm.engine.add_request("x", [5, 6], SamplingParams(), lora="nope")
    with pytest.raises(AdapterNotFoundError):
        llm.generate([[5, 6]], SamplingParams(), lora="nope")
    assert not llm.engine.has_unfinished()


def test_duplicate_request_id(llm):
    eng = llm.engine
    eng.add_request("dup", [5, 6], SamplingParams(max_tokens=1))
    try:
        with pytest.raises(InvalidRequestError, match="dup"):
            eng.add_request("dup", [7, 8], SamplingParams(max_tokens=1))
    finally:
        assert eng.abort("dup")
    assert not eng.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        # NaN passes a plain "< 0" check and then crashes the sampler for the whole batch
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": float("nan")}, "min_p"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"logit_bias": {5: 100.5}}, "logit_bias"),
        ({"logit_bias": {5: float("-inf")}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"logit_bias": dict.fromkeys(range(301), 1.0)}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"stop": ("ok", "")}, "stop"),
    ],
    ids=lambda v: ",".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_invalid_sampling_params(kwargs, word):
    with pytest.raises(InvalidRequestError, match=word):
        SamplingParams(**kwargs)


def test_vllm_normalisations():
    # vLLM: top_k 0 is off like -1; a positive temperature below 0.01 is raised to 0.01 (dividing
    # logits by 1e-300 overflows), 0 stays greedy; an empty logit_bias is none.
    assert SamplingParams(top_k=0).top_k == -1
    assert SamplingParams(temperature=1e-300).temperature == 0.01
    assert not SamplingParams(temperature=1e-300).greedy
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(logit_bias={}).logit_bias is None
    assert SamplingParams(logit_bias={3: -100}).logit_bias == {3: -100.0}
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1


def test_stop_given_as_a_single_string_is_one_stop_string():
    assert SamplingParams(stop="abc").stop == ("abc",)


def test_mismatched_per_prompt_lists(llm):
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        llm.generate([[5], [6], [7]], [SamplingParams(), SamplingParams()])
    assert not llm.engine.has_unfinished()


def test_unknown_dtype(model_src):
    with pytest.raises(InvalidRequestError, match="dtype"):
        LLM(model_src, **{**OPTS, "dtype": "float64"})


def test_kv_cache_too_small_for_one_sequence(model_src):
    small = LLM(model_src, **{**OPTS, "num_kv_blocks": 2})  # 32 tokens need 8 blocks of 4
    with pytest.raises(CapacityError):
        small.engine.add_request("big", [5, 6], SamplingParams())
    assert not small.engine.has_unfinished()


def _abort_everything(eng) -> None:
    """Keep the shared engine usable for later tests even when a test found a leak."""
    for seq in [*eng.scheduler.running, *eng.scheduler.waiting]:
        eng.abort(seq.request_id)


def test_failed_generate_leaves_no_requests_behind(llm):
    # the second prompt is invalid: the call fails, and the first must not linger in the engine
    try:
        with pytest.raises(InvalidRequestError):
            llm.generate(
                [[5, 6, 7], [SPEC.vocab_size + 5]], SamplingParams(temperature=0.0, max_tokens=3)
            )
        assert not llm.engine.has_unfinished()
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3))
        assert len(out) == 1 and len(out[0].token_ids) == 3
    finally:
        _abort_everything(llm.engine)


def test_removing_an_adapter_with_queued_requests_does_not_break_the_engine(llm, adapter_src):
    eng = llm.engine
    llm.add_lora("queued", adapter_src)
    eng.add_request(
        "uses-queued", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=2), lora="queued"
    )
    try:
        llm.remove_lora("queued")
    except AdapterError:
        removed = False  # refusing is fine: the request still needs it
    else:
        removed = True
    finished = {}
    try:
        for _ in range(20):
            if not eng.has_unfinished():
                break
            for out in eng.step():
                if out.finished:
                    finished[out.request_id] = out.finish_reason
        assert not eng.has_unfinished()
    finally:
        _abort_everything(eng)
    if removed:
        assert finished.get("uses-queued") == "abort" or "uses-queued" not in finished
    else:
        assert finished["uses-queued"] == "length"
        llm.remove_lora("queued")
