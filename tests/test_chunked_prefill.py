"""Chunked prefill: prompts longer than ``max_num_batched_tokens`` are prefilled over several
steps, each chunk attending to the earlier chunks' K/V in the paged cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.kernels import torch_ref
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

MAX_TOKENS = 6
ADAPTERS = {"all-r8": (8, ALL_MODULES), "qv-r4": (4, ("q_proj", "v_proj"))}
# Lengths around the budget (7) and block size (4): under, equal, just over, several chunks.
PROMPTS = [[(i * 37 + 5) % 1000 for i in range(n)] for n in (3, 7, 8, 15, 29)] + [
    [900, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
]
LORAS = ["all-r8", None, "qv-r4", "all-r8", None, "qv-r4"]
SPECS = {
    "llama": TinyModelSpec(arch="llama", seed=21),
    "mistral-window": TinyModelSpec(arch="mistral", seed=22, sliding_window=10),
    "qwen2-gqa": TinyModelSpec(arch="qwen2", seed=23, num_kv_heads=1),
}


@pytest.fixture(scope="module", params=list(SPECS))
def setup(request, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    spec = SPECS[request.param]
    root = tmp_path_factory.mktemp(f"chunked-{request.param}")
    return write_model_and_adapters(root, spec, ranked(ADAPTERS))


def _llm(setup, budget: int) -> LLM:
    model, paths = setup
    return llm_with_adapters(
        model,
        paths,
        dtype="float32",
        device="cpu",
        max_loras=2,
        max_lora_rank=8,
        block_size=4,
        max_num_batched_tokens=budget,
    )


def test_chunked_prefill_matches_hf_peft(setup) -> None:
    """Budget 7 tokens per step: the 29-token prompt takes five steps; tokens and logits equal
    HF + PEFT's full-prompt forward (sliding window 10 crosses chunk borders)."""
    model, paths = setup
    ref = HFReference(model, paths)
    llm = _llm(setup, budget=7)
    assert llm.engine.max_model_len > 7  # no longer clamped to the budget
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(PROMPTS, params, lora=LORAS)
    for out, prompt, lora in zip(outs, PROMPTS, LORAS, strict=True):
        tokens, _ = ref.greedy(prompt, lora, MAX_TOKENS)
        assert out.token_ids == tokens, (len(prompt), lora)


def test_first_token_logits_match_unchunked(setup) -> None:
    chunked, whole = _llm(setup, budget=5), _llm(setup, budget=4096)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    logits = []
    for llm in (chunked, whole):
        got = {}
        for i, (p, lo) in enumerate(zip(PROMPTS, LORAS, strict=True)):
            llm.engine.add_request(f"r{i}", p, params, lo)
        steps = 0
        while llm.engine.has_unfinished():
            llm.engine.step()
            got.update(llm.engine.last_logits)
            steps += 1
        logits.append((got, steps))
    (got_c, steps_c), (got_w, steps_w) = logits
    assert steps_c > steps_w  # really chunked
    assert got_c.keys() == got_w.keys() == {f"r{i}" for i in range(len(PROMPTS))}
    for rid, row in got_w.items():
        torch.testing.assert_close(got_c[rid], row, atol=1e-4, rtol=1e-4)


def test_seeded_sampling_unchanged_by_chunking(setup) -> None:
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=5)
        for i in range(len(PROMPTS))
    ]
    outs = [
        [o.token_ids for o in _llm(setup, budget).generate(PROMPTS, params, lora=LORAS)]
        for budget in (6, 4096)
    ]
    assert outs[0] == outs[1]


def test_prefill_only_handoff_after_chunks(setup) -> None:
    """A prefill worker with a small budget hands over the same K/V and first token."""
    payloads = []
    for budget in (5, 4096):
        eng = _llm(setup, budget).engine
        eng.add_request("long", PROMPTS[4], SamplingParams(temperature=0), "all-r8", True)
        outs = []
        while eng.has_unfinished():
            outs.extend(eng.step())
        assert len(outs) == 1 and outs[0].handoff is not None
        payloads.append(outs[0].handoff)
    chunked, whole = payloads
    assert chunked.first_token == whole.first_token
    assert chunked.num_tokens == whole.num_tokens == len(PROMPTS[4])
    torch.testing.assert_close(chunked.payload, whole.payload, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 3, 6])
def test_prefill_attention_paged_matches_full_causal(window: int | None) -> None:
    """Chunks of [prefix | new] attention read through block tables equal slices of one causal
    attention over the whole sequence; a sequence without prefix uses its fresh K/V."""
    gen = torch.Generator().manual_seed(5)
    heads, kvh, d, bs = 4, 2, 8, 4
    lens, prefixes = [11, 6], [7, 0]  # seq 0: 7 cached + 4 new; seq 1: 6 new
    q_full = [torch.randn(n, heads, d, generator=gen) for n in lens]
    k_full = [torch.randn(n, kvh, d, generator=gen) for n in lens]
    v_full = [torch.randn(n, kvh, d, generator=gen) for n in lens]
    k_cache = torch.full((12, bs, kvh, d), float("nan"))
    v_cache = k_cache.clone()
    tables = torch.tensor([[5, 2, 9], [1, 7, 0]], dtype=torch.int32)
    for i, n in enumerate(lens):
        slots = torch.tensor([int(tables[i, p // bs]) * bs + p % bs for p in range(n)])
        torch_ref.store_kv(k_full[i], v_full[i], k_cache, v_cache, slots)
    new = [slice(p, n) for p, n in zip(prefixes, lens, strict=True)]
    q = torch.cat([x[s] for x, s in zip(q_full, new, strict=True)])
    k = torch.cat([x[s] for x, s in zip(k_full, new, strict=True)])
    v = torch.cat([x[s] for x, s in zip(v_full, new, strict=True)])
    cu = [0, 4, 10]
    out = torch_ref.prefill_attention_paged(
        q, k, v, k_cache, v_cache, cu, prefixes, tables, d**-0.5, window
    )
    for i, s in enumerate(new):
        full = torch_ref.prefill_attention(
            q_full[i], k_full[i], v_full[i], [0, lens[i]], d**-0.5, window
        )
        torch.testing.assert_close(out[cu[i] : cu[i + 1]], full[s], atol=1e-5, rtol=1e-5)


def test_mixed_steps_match_hf_peft(setup) -> None:
    """Requests already decoding ride along in the steps that prefill a late long prompt
    (mixed prefill + decode steps); everyone's tokens still equal HF + PEFT."""
    model, paths = setup
    ref = HFReference(model, paths)
    llm = _llm(setup, budget=6)
    eng = llm.engine
    shapes = []
    schedule = eng.scheduler.schedule

    def recording():  # type: ignore[no-untyped-def]
        batch = schedule()
        if batch is not None:
            shapes.append((batch.num_prefill_seqs, len(batch.seqs)))
        return batch

    eng.scheduler.schedule = recording  # type: ignore[method-assign]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    got: dict[str, list[int]] = {}
    early = [(0, "all-r8"), (5, None)]  # a 3-token and an 11-token prompt start first
    for i, lora in early:
        eng.add_request(f"r{i}", PROMPTS[i], params, lora)
    for _ in range(3):
        for out in eng.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    eng.add_request("r4", PROMPTS[4], params, "qv-r4")  # 29 tokens: five chunks
    while eng.has_unfinished():
        for out in eng.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert any(0 < p < n for p, n in shapes), shapes  # some steps really were mixed
    for i, lora in [*early, (4, "qv-r4")]:
        assert got[f"r{i}"] == ref.greedy(PROMPTS[i], lora, MAX_TOKENS)[0], i
