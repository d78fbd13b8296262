"""A request resumed with the tokens it generated before its worker died (migration) continues
exactly as the uninterrupted run: greedy, seeded sampling, penalties, a grammar, stop conditions
and max_tokens; colocated and through a prefill -> decode hand-over."""

from __future__ import annotations

import re

import pytest

from loraplex import LLM, SamplingParams
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.resume import resumed_params
from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams
from loraplex.tooling.demo import write_demo_model

PROMPT = [5, 6, 7, 8, 9, 10, 11]
REGEX = r"[a-z]{3,8}-[0-9]{2,4}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("resume"), num_adapters=2)


@pytest.fixture(scope="module")
def llm(demo) -> LLM:
    llm = LLM(demo.model_dir, dtype="float32", device="cpu", max_loras=2, block_size=4)
    for a in demo.adapters:
        llm.add_lora(a.name, a.path)
    return llm


def _run(engine: LLMEngine, rid: str, **add) -> list[int]:  # type: ignore[no-untyped-def]
    engine.add_request(rid, **add)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            tokens += out.new_token_ids
    return tokens


CASES = {
    "greedy": SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
    "seeded": SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True),
    "penalties": SamplingParams(
        temperature=1.0,
        seed=7,
        max_tokens=12,
        ignore_eos=True,
        presence_penalty=1.5,
        frequency_penalty=1.0,
        repetition_penalty=1.3,
    ),
    "grammar": SamplingParams(
        temperature=1.0,
        seed=3,
        max_tokens=24,
        structured_outputs=StructuredOutputsParams(regex=REGEX),
    ),
    # EOS is every step's favourite: min_tokens holds it off, also after a resume
    "min_tokens": SamplingParams(
        temperature=1.0, seed=5, max_tokens=12, min_tokens=8, logit_bias={1: 8.0}
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("lora", [None, 0])
def test_resumed_request_continues_the_uninterrupted_tokens(llm, demo, case, lora):
    params = CASES[case]
    adapter = None if lora is None else demo.adapters[lora].name
    engine = llm.engine
    full = _run(engine, f"{case}-full", prompt_token_ids=PROMPT, params=params, lora=adapter)
    assert len(full) >= 6
    for cut in (1, len(full) // 2, len(full) - 1):
        rest = _run(
            engine,
            f"{case}-{cut}",
            prompt_token_ids=PROMPT,
            params=params,
            lora=adapter,
            generated=full[:cut],
        )
        assert full[:cut] + rest == full, cut
    if case == "grammar":
        assert re.fullmatch(REGEX, engine.tokenizer.decode(full, True))
    if case == "min_tokens":
        assert 1 in engine.eos_ids and 1 not in full[:8]


def test_a_resumed_request_counts_its_tokens_as_outputs(llm):
    """Penalties see the resumed tokens as outputs, not prompt: a frequency penalty that differs
    between the two readings changes the greedy choice, and the resumed run follows the outputs
    reading (the uninterrupted run)."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, frequency_penalty=2.0)
    full = _run(engine, "fp-full", prompt_token_ids=PROMPT, params=params)
    as_prompt = _run(engine, "fp-prompt", prompt_token_ids=PROMPT + full[:5], params=params)
    resumed = _run(engine, "fp-out", prompt_token_ids=PROMPT, params=params, generated=full[:5])
    assert full[:5] + resumed == full
    assert len(resumed) == 5  # max_tokens counts the resumed tokens
    assert as_prompt != resumed  # the two readings differ, so the check above means something


def test_resumed_request_stops_on_a_stop_string_spanning_the_resume_point(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    full = _run(engine, "stop-full", prompt_token_ids=PROMPT, params=params)
    text = engine.tokenizer.decode(full, True)
    head = engine.tokenizer.decode(full[:4], True)
    assert len(text) > len(head) + 2
    stop = text[len(head) - 1 : len(head) + 2]  # begins in the resumed tokens, ends after them
    stopped = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=(stop,))
    whole = _run(engine, "stop-a", prompt_token_ids=PROMPT, params=stopped)
    resumed = _run(engine, "stop-b", prompt_token_ids=PROMPT, params=stopped, generated=full[:4])
    assert full[:4] + resumed == whole
    assert len(whole) < len(full)


def test_resume_through_a_prefill_decode_handover(demo, llm):
    """A prefill-only engine prefills prompt + generated tokens and hands the K/V over; the decode
    engine continues the uninterrupted seeded run."""
    params = CASES["seeded"]
    full = _run(llm.engine, "hand-full", prompt_token_ids=PROMPT, params=params)
    prefill = LLM(demo.model_dir, dtype="float32", device="cpu", block_size=4).engine
    decode = LLM(demo.model_dir, dtype="float32", device="cpu", block_size=4).engine
    generated = full[:5]
    prefill.add_request("h", PROMPT, params, None, prefill_only=True, generated=generated)
    (out,) = prefill.step()
    assert out.handoff is not None and out.handoff.num_tokens == len(PROMPT) + 5
    cached = decode.reserve_for_prompt("h", PROMPT + generated, None)
    assert cached == 0
    first = decode.inject(
        "h", PROMPT, params, None, out.handoff.first_token, out.handoff.payload, generated=generated
    )
    tokens = generated + first.new_token_ids
    while decode.has_unfinished():
        for o in decode.step():
            tokens += o.new_token_ids
    assert tokens == full
    assert decode.allocator.num_used == 0


def test_resumed_params_refuse_what_cannot_be_outputs():
    p = SamplingParams(max_tokens=4, prompt_logprobs=2)
    assert resumed_params(p, [1, 2], 100).prompt_logprobs is None
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        resumed_params(p, [1, 2, 3, 4], 100)
    with pytest.raises(InvalidRequestError, match="token ids"):
        resumed_params(p, [1, 100], 100)


def _run_text(engine: LLMEngine, rid: str, **add) -> str:  # type: ignore[no-untyped-def]
    """The completion text as the gateway builds it: a resumed request's replayed text, then each
    output's text at its ``text_start`` (which must follow on: the engine has one detokenizer)."""
    engine.add_request(rid, **add)
    text: str | None = None
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            if text is None:
                text = out.resumed_text or ""
                assert (out.resumed_text is not None) == bool(add.get("generated"))
            else:
                assert out.resumed_text is None
            assert out.text_start == len(text), rid
            text += out.new_text
    assert text is not None
    return text


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])
def test_a_resumed_request_replays_its_text_and_goes_on_at_the_right_offset(llm, cut):
    """The text of the resumed tokens (what the worker replays to the gateway from offset 0) and
    the text after them make the uninterrupted text, with a stop string spanning the resume point
    (whose start is held back at the resume) and without."""
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    full = _run(engine, f"text-full-{cut}", prompt_token_ids=PROMPT, params=params)
    whole = _run_text(engine, f"text-a-{cut}", prompt_token_ids=PROMPT, params=params)
    assert whole == engine.tokenizer.decode(full, True)
    resumed = _run_text(
        engine, f"text-b-{cut}", prompt_token_ids=PROMPT, params=params, generated=full[:cut]
    )
    assert resumed == whole
    head = engine.tokenizer.decode(full[:4], True)
    stop = whole[len(head) - 1 : len(head) + 2]  # begins in the first 4 tokens, ends after them
    stopped = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=(stop,))
    cut_text = _run_text(engine, f"text-c-{cut}", prompt_token_ids=PROMPT, params=stopped)
    assert cut_text == whole[: whole.index(stop)]
    if cut < 5:  # a resumed request's tokens hold no complete stop string
        resumed = _run_text(
            engine, f"text-d-{cut}", prompt_token_ids=PROMPT, params=stopped, generated=full[:cut]
        )
        assert resumed == cut_text
