"""``min_tokens`` (vLLM): no EOS, no stop token id and no stop string before that many tokens, on
the offline engine; the stack and the gateway are in tests/stack/test_e2e_outputs.py and here."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.errors import InvalidRequestError
from loraplex.tooling.demo import TinyModelSpec
from tests.tiny_models import write_model_and_adapters

PROMPTS = [[5, 17, 300, 42, 7], [900, 12, 13], [3] * 9]


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    spec = TinyModelSpec(arch="llama", seed=61)
    model, _ = write_model_and_adapters(tmp_path_factory.mktemp("min-tokens"), spec, {})
    return LLM(model, dtype="float32", device="cpu", block_size=4)


def eos(llm: LLM) -> int:
    return min(llm.engine.eos_ids)


def test_eos_waits_for_min_tokens(llm: LLM) -> None:
    """EOS biased to be every step's greedy choice: without min_tokens the answer ends at once;
    with 5 the first 5 tokens are what greedy picks with EOS pushed out, then EOS ends it."""
    end = eos(llm)
    hurry = SamplingParams(temperature=0, max_tokens=9, logit_bias={end: 100})
    at_once = llm.generate(PROMPTS, hurry)
    assert all(o.token_ids == [end] and o.finish_reason == "stop" for o in at_once)
    never = SamplingParams(temperature=0, max_tokens=5, logit_bias={end: -100})
    want = [o.token_ids for o in llm.generate(PROMPTS, never)]
    held = llm.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=9, logit_bias={end: 100}, min_tokens=5)
    )
    for out, first in zip(held, want, strict=True):
        assert out.token_ids == [*first, end] and out.finish_reason == "stop"
    # sampled too, and rows without min_tokens in the same batch are untouched
    mixed = llm.generate(
        PROMPTS[:2],
        [
            SamplingParams(
                temperature=0.8, seed=3, max_tokens=9, logit_bias={end: 100}, min_tokens=3
            ),
            hurry,
        ],
    )
    assert len(mixed[0].token_ids) == 4 and end not in mixed[0].token_ids[:3]
    assert mixed[1].token_ids == [end]


def test_stop_token_ids_wait_too_and_ignore_eos_keeps_eos_sampleable(llm: LLM) -> None:
    end = eos(llm)
    plain = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[
        0
    ]
    stop_id = plain.token_ids[1]  # greedy's second token, made a stop token id
    cut = llm.generate(
        PROMPTS[0],
        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, stop_token_ids=[stop_id]),
    )[0]
    assert cut.token_ids == plain.token_ids[:2] and cut.stop_reason == stop_id
    held = llm.generate(
        PROMPTS[0],
        SamplingParams(
            temperature=0, max_tokens=6, ignore_eos=True, stop_token_ids=[stop_id], min_tokens=4
        ),
    )[0]
    assert stop_id not in held.token_ids[:4] and len(held.token_ids) >= 4
    # ignore_eos: EOS never stops, so min_tokens leaves it sampleable (vLLM does the same)
    free = llm.generate(
        PROMPTS[0],
        SamplingParams(
            temperature=0, max_tokens=3, ignore_eos=True, logit_bias={end: 100}, min_tokens=3
        ),
    )[0]
    assert free.token_ids == [end, end, end]


def test_stop_strings_are_looked_for_from_min_tokens_on(llm: LLM) -> None:
    """A stop string in the first token's text ends the answer there; with min_tokens 3 it is
    looked for only in the text of token 3 on (text already shown is not searched again)."""
    plain = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[
        0
    ]
    first = llm.tokenizer.decode(plain.token_ids[:1], True)
    stop = first.strip()[:2] or first[:1]
    assert stop
    early = llm.generate(
        PROMPTS[1], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, stop=[stop])
    )[0]
    assert early.finish_reason == "stop" and len(early.token_ids) == 1
    later = llm.generate(
        PROMPTS[1],
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, stop=[stop], min_tokens=3),
    )[0]
    assert len(later.token_ids) >= 3 and later.token_ids == plain.token_ids[: len(later.token_ids)]
    if later.finish_reason == "stop":  # on an occurrence that ends in token 3's text or later
        assert later.stop_reason == stop and plain.text.startswith(later.text + stop)
        shown = llm.tokenizer.decode(plain.token_ids[:2], True)
        assert len(later.text) + len(stop) > len(shown)
    else:
        assert later.token_ids == plain.token_ids and later.text == plain.text


@pytest.mark.parametrize("bad", [-1, 10])
def test_min_tokens_range(bad: int) -> None:
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(max_tokens=9, min_tokens=bad)
