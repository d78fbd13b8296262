"""vLLM's ``allowed_token_ids`` and ``bad_words`` (as token ids) on the offline engine: only the
allowed tokens come out, greedy among them; a banned word never completes, while its prefix may
still be generated; rows without them in the same batch are untouched."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams
from loraplex.engine.banned_tokens import banned_next, prefix_index
from loraplex.errors import InvalidRequestError
from loraplex.tooling.demo import TinyModelSpec
from tests.tiny_models import write_model_and_adapters

PROMPTS = [[5, 17, 300, 42, 7], [900, 12, 13]]


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    spec = TinyModelSpec(arch="llama", seed=62)
    model, _ = write_model_and_adapters(tmp_path_factory.mktemp("banned"), spec, {})
    return LLM(model, dtype="float32", device="cpu", block_size=4)


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)  # type: ignore[arg-type]


def test_only_allowed_tokens_come_out(llm: LLM) -> None:
    free = [o.token_ids for o in llm.generate(PROMPTS, greedy(6))]
    # greedy's own choices stay the argmax inside a set that holds them
    allowed = tuple(sorted({t for ids in free for t in ids} | {1, 2, 3}))
    kept = [o.token_ids for o in llm.generate(PROMPTS, greedy(6, allowed_token_ids=allowed))]
    assert kept == free
    # a set without them: every token from the set, and not what greedy picked first
    other = tuple(t for t in range(20, 60) if t not in allowed)
    for seed, out in enumerate(llm.generate(PROMPTS, greedy(6, allowed_token_ids=other))):
        assert set(out.token_ids) <= set(other) and out.token_ids[0] != free[seed][0]
    sampled = llm.generate(
        PROMPTS, SamplingParams(temperature=1.5, seed=4, max_tokens=8, allowed_token_ids=other)
    )
    assert all(set(o.token_ids) <= set(other) for o in sampled)
    # the same batch: a row without the list is greedy's
    mixed = llm.generate(PROMPTS, [greedy(6, allowed_token_ids=other), greedy(6)])
    assert mixed[1].token_ids == free[1]


def test_a_bad_word_never_completes(llm: LLM) -> None:
    free = llm.generate(PROMPTS[:1], greedy(6))[0].token_ids
    one = llm.generate(PROMPTS[:1], greedy(6, bad_words_token_ids=((free[0],),)))[0].token_ids
    assert free[0] not in one
    two = llm.generate(PROMPTS[:1], greedy(6, bad_words_token_ids=((free[0], free[1]),)))[0]
    assert two.token_ids[0] == free[0] and two.token_ids[1] != free[1]  # the prefix may come
    for i in range(len(two.token_ids) - 1):
        assert two.token_ids[i : i + 2] != free[:2]


def test_banned_next_follows_the_output_tail() -> None:
    index = prefix_index(((7,), (1, 2), (1, 2, 3), (9, 9, 9, 9), (4, 2)))
    assert banned_next(index, []) == [7]
    assert sorted(banned_next(index, [5, 1])) == [2, 7]
    assert sorted(banned_next(index, [1, 2])) == [3, 7]
    assert banned_next(index, [9, 9]) == [7]
    assert sorted(banned_next(index, [9, 9, 9])) == [7, 9]
    assert sorted(banned_next(index, [0, 4])) == [2, 7]


@pytest.mark.parametrize(
    "kw",
    [
        {"allowed_token_ids": ()},
        {"allowed_token_ids": (-1,)},
        {"allowed_token_ids": (True,)},
        {"bad_words_token_ids": ((),)},
        {"bad_words_token_ids": ((1,) * 65,)},
        {"bad_words_token_ids": ((1,),) * 257},
    ],
)
def test_bad_lists_are_refused(kw: dict) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kw)
