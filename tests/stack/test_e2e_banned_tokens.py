"""End to end on the disaggregated stack: ``allowed_token_ids`` and ``bad_words`` give what the
offline engine gives with the same token lists (the prefill worker samples the first token, the
decode worker the rest: both apply them)."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.gateway.bad_words import bad_words_token_ids
from tests.stack.e2e_common import PROMPTS, offline_llm


@pytest.fixture(scope="module")
def llm(disagg_stack) -> LLM:  # type: ignore[no-untyped-def]
    return offline_llm(disagg_stack)


def offline(llm: LLM, prompt: list[int], lora: str | None, **kw: object) -> list[int]:
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, **kw)  # type: ignore[arg-type]
    return llm.generate(prompt, params, lora=lora)[0].token_ids


def test_allowed_and_banned_tokens_match_the_offline_engine(client, llm, model_id, loras):  # type: ignore[no-untyped-def]
    prompt, lora = PROMPTS[0], loras[0]
    free = offline(llm, prompt, lora)
    allowed = tuple(t for t in range(30, 90) if t not in free)
    want = offline(llm, prompt, lora, allowed_token_ids=allowed)
    got = client.completions.create(
        model=lora, prompt=prompt, max_tokens=6, temperature=0,
        extra_body={"allowed_token_ids": list(allowed), "ignore_eos": True},
    )  # fmt: skip
    assert set(want) <= set(allowed) and want[0] != free[0]
    assert got.choices[0].text == llm.tokenizer.decode(want)

    # every token greedy wrote, as a bad word (tokenized as vLLM does: with this BPE vocabulary
    # most of them ban other sequences than greedy's " word" tokens, as they would in vLLM)
    words = [llm.tokenizer.decode([t]) for t in free]
    words = [w for w in words if w.strip()]
    forms = bad_words_token_ids(words, lambda t: llm.tokenizer.encode(t, False))
    banned = offline(llm, prompt, lora, bad_words_token_ids=forms)
    for form in forms:  # no form is ever completed
        n = len(form)
        assert all(tuple(banned[i : i + n]) != form for i in range(len(banned)))
    got = client.completions.create(
        model=lora, prompt=prompt, max_tokens=6, temperature=0,
        extra_body={"bad_words": words, "ignore_eos": True},
    )  # fmt: skip
    assert got.choices[0].text == llm.tokenizer.decode(banned)
