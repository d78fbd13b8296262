"""Presence, frequency and repetition penalties: against HF's generate and a written-out loop."""

from __future__ import annotations

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.demo import TinyModelSpec, write_demo_tokenizer, write_random_model
from loraplex.engine.penalties import apply_penalties
from loraplex.engine.sequence import Sequence
from loraplex.errors import InvalidRequestError

SPEC = TinyModelSpec(arch="llama", seed=41)
PROMPTS = [[5, 17, 300, 42, 7, 5, 5], [900, 12], [3, 3, 3, 40]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("penalties")
    write_random_model(root, SPEC)
    write_demo_tokenizer(root, SPEC.vocab_size)
    return root


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _llm(model_dir) -> LLM:
    return LLM(model_dir, dtype="float32", device="cpu", block_size=4)


def test_repetition_penalty_matches_hf_generate(model_dir, hf) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.8)
    got = [o.token_ids for o in _llm(model_dir).generate(PROMPTS, params)]
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        out = hf.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=12,
            repetition_penalty=1.8,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert tokens == out[0, len(prompt) :].tolist()
    plain = _llm(model_dir).generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    assert [o.token_ids for o in plain] != got  # the penalty changed something


@torch.no_grad()
def _reference(hf, prompt: list[int], presence: float, frequency: float, n: int) -> list[int]:
    ids, out = list(prompt), []
    for _ in range(n):
        logits = hf(torch.tensor([ids])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0])
        logits -= frequency * counts + presence * (counts > 0).float()
        tok = int(logits.argmax())
        out.append(tok)
        ids.append(tok)
    return out


@pytest.mark.parametrize(("presence", "frequency"), [(1.5, 0.0), (0.0, 0.9), (0.5, 0.5)])
def test_presence_and_frequency_penalties_match_a_written_out_loop(
    model_dir, hf, presence: float, frequency: float
) -> None:
    params = SamplingParams(
        temperature=0,
        max_tokens=10,
        ignore_eos=True,
        presence_penalty=presence,
        frequency_penalty=frequency,
    )
    got = [o.token_ids for o in _llm(model_dir).generate(PROMPTS, params)]
    assert got == [_reference(hf, p, presence, frequency, 10) for p in PROMPTS]


def test_only_rows_with_penalties_change() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [2.0, -1.0, 0.5]])
    a = Sequence("a", [0, 1], SamplingParams(repetition_penalty=2.0))
    b = Sequence("b", [0, 1], SamplingParams())
    out = apply_penalties(logits, [a, b])
    assert out[0].tolist() == [1.0, -2.0, 0.5] and out[1].tolist() == logits[1].tolist()
    assert logits[0].tolist() == [2.0, -1.0, 0.5]  # the input is left alone


@pytest.mark.parametrize(
    "bad",
    [
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"repetition_penalty": 0},
        {"repetition_penalty": float("nan")},
    ],
)
def test_out_of_range_penalties_are_refused(bad) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)
