"""Presence, frequency and repetition penalties: against HF's generate and a written-out loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.penalties import apply_penalties
from loraplex.engine.sampler import sample
from loraplex.engine.sequence import Sequence
from loraplex.errors import InvalidRequestError
from loraplex.tooling.demo import TinyModelSpec, write_demo_tokenizer, write_random_model

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


def test_logit_bias_steers_greedy_decoding_and_logprobs_stay_raw(model_dir, hf) -> None:
    llm = _llm(model_dir)
    base = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=0)
    plain = llm.generate([PROMPTS[1]], base)[0].token_ids
    target = next(t for t in (123, 124, 125) if t not in plain)
    forced = llm.generate([PROMPTS[1]], replace(base, logit_bias={target: 100}))[0]
    assert forced.token_ids == [target] * 4
    with torch.no_grad():  # vLLM's default: logprobs of the model before any bias
        raw = hf(torch.tensor([PROMPTS[1]])).logits[0, -1].float().log_softmax(-1)
    assert forced.logprobs is not None
    assert forced.logprobs[0].logprob == pytest.approx(raw[target].item(), abs=1e-4)
    banned = llm.generate([PROMPTS[1]], replace(base, logit_bias={plain[0]: -100}))[0].token_ids
    assert banned[0] != plain[0]


@pytest.mark.parametrize(
    "extreme",
    [
        {"repetition_penalty": 1e-300},
        {"repetition_penalty": 1e300},
        {"temperature": 1e-300},
        {"temperature": 1e300, "repetition_penalty": 1e-300, "min_p": 1.0},
    ],
)
def test_extreme_accepted_values_generate_tokens(model_dir, extreme) -> None:
    # issue 13: repetition_penalty=1e-300 or temperature=1e-300 crashed the sampler
    # ("probability tensor contains either inf, nan or element < 0")
    params = SamplingParams(max_tokens=8, ignore_eos=True, seed=1, **extreme)
    out = _llm(model_dir).generate([[5, 9, 5, 9, 5, 9]], params)[0]
    assert len(out.token_ids) == 8 and out.finish_reason == "length"
    assert all(0 <= t < SPEC.vocab_size for t in out.token_ids)


SWEEP_VOCAB = 12
SWEEP = [
    SamplingParams(
        temperature=t,
        repetition_penalty=rp,
        presence_penalty=pp,
        frequency_penalty=fp,
        logit_bias=bias,
        min_p=m,
    )
    for t in (0.0, 1e-300, 1.0, 1e300)
    for rp in (1e-300, 0.5, 1.0, 2.0, 1e300)
    for pp in (-2.0, 0.0, 2.0)
    for fp in (-2.0, 2.0)
    for bias in (None, {0: 100.0, 3: -100.0, 10**9: 5.0})  # 10**9: outside this vocabulary
    for m in (0.0, 1.0)
]


@pytest.mark.parametrize("scale", [5.0, 1e30])
def test_penalty_sweep_keeps_logits_finite_and_tokens_in_range(scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale) % 1000)
    logits = torch.randn(len(SWEEP), SWEEP_VOCAB, generator=g) * scale
    seqs = [
        Sequence(f"r{n}", [1, 2, 3, 3, 7], p, output_token_ids=[3, 5, 5])
        for n, p in enumerate(SWEEP)
    ]
    shaped = apply_penalties(logits, seqs)
    assert torch.isfinite(shaped).all()
    out = sample(shaped, SWEEP, [torch.Generator().manual_seed(n) for n in range(len(SWEEP))])
    assert all(0 <= t < SWEEP_VOCAB for t in out)
    for n, p in enumerate(SWEEP):
        # a tiny repetition penalty makes every seen token with a positive logit the favourite
        seen_up = {t for t in (1, 2, 3, 5, 7) if logits[n, t] > 0}
        if p.repetition_penalty == 1e-300 and seen_up and p.min_p == 1.0 and p.logit_bias is None:
            assert out[n] in seen_up, (p, logits[n].tolist(), out[n])
