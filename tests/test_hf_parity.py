"""Mixed-adapter batches match Hugging Face transformers + PEFT token for token (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from loraplex import SamplingParams
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, write_model_and_adapters

MAX_TOKENS = 8
# (name, rank, alpha, targets, rslora)
ADAPTERS = [
    ("all-r8", 8, 16, ALL_MODULES, False),
    ("attn-r16", 16, 8, ("q_proj", "k_proj", "v_proj", "o_proj"), False),
    ("mlp-r4", 4, 32, ("gate_proj", "up_proj", "down_proj"), False),
    ("qv-r32-rs", 32, 16, ("q_proj", "v_proj"), True),
    ("r1-o-down", 1, 2, ("o_proj", "down_proj"), False),
]
PROMPTS = [
    [5, 17, 300, 42, 7],
    [900, 12],
    [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 40],
    [250],
    [11, 22, 33, 44, 55, 66, 77],
    [600, 601, 602, 603],
    [8, 9, 10],
    [77, 66, 55, 44, 33, 22, 11, 0, 1000],
]
LORAS = ["all-r8", None, "attn-r16", "mlp-r4", "qv-r32-rs", "all-r8", "r1-o-down", None]

SPECS = {
    "llama": TinyModelSpec(arch="llama", seed=1),
    "llama3-tied-sharded": TinyModelSpec(
        arch="llama",
        seed=2,
        tie_word_embeddings=True,
        num_shards=3,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "mistral-window": TinyModelSpec(arch="mistral", seed=3, sliding_window=10),
    "qwen2": TinyModelSpec(arch="qwen2", seed=4, num_kv_heads=1),
}


@pytest.fixture(scope="module", params=list(SPECS))
def setup(request, tmp_path_factory):
    spec = SPECS[request.param]
    adapters = {
        name: {"rank": rank, "alpha": alpha, "targets": targets, "use_rslora": rs, "seed": 10 + i}
        for i, (name, rank, alpha, targets, rs) in enumerate(ADAPTERS)
    }
    model_dir, paths = write_model_and_adapters(
        tmp_path_factory.mktemp(request.param), spec, adapters
    )
    ref = HFReference(model_dir, paths)
    expected = [ref.greedy(p, lora, MAX_TOKENS) for p, lora in zip(PROMPTS, LORAS, strict=False)]
    llm = llm_with_adapters(
        model_dir, paths, dtype="float32", device="cpu", max_loras=4, max_lora_rank=32, block_size=4
    )
    return llm, expected


GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def test_mixed_batch_matches_hf_peft(setup):
    llm, expected = setup
    outs = llm.generate(PROMPTS, GREEDY, lora=LORAS)
    for out, (tokens, _), lora in zip(outs, expected, LORAS, strict=False):
        assert out.token_ids == tokens, f"adapter {lora}: {out.token_ids} != HF {tokens}"


def test_logits_close_to_hf_peft(setup):
    llm, expected = setup
    engine = llm.engine
    for i, (prompt, lora) in enumerate(zip(PROMPTS, LORAS, strict=False)):
        engine.add_request(f"logits-{i}", prompt, GREEDY, lora)
    step = 0
    while engine.has_unfinished():
        engine.step()
        for rid, row in engine.last_logits.items():
            i = int(rid.split("-")[1])
            seen = (
                len(engine.scheduler.find(rid).output_token_ids)
                if engine.scheduler.find(rid)
                else MAX_TOKENS
            )
            ref = expected[i][1][seen - 1]
            torch.testing.assert_close(row, ref, rtol=1e-4, atol=1e-4)
        step += 1
    assert step >= MAX_TOKENS


def test_rows_independent_of_batch_mates(setup):
    llm, expected = setup
    for prompt, lora, (tokens, _) in zip(PROMPTS, LORAS, expected, strict=False):
        (alone,) = llm.generate([prompt], GREEDY, lora=[lora])
        assert alone.token_ids == tokens
    # A different mix and order of batch-mates changes nothing either.
    order = [7, 3, 0, 5, 1]
    outs = llm.generate([PROMPTS[i] for i in order], GREEDY, lora=[LORAS[i] for i in order])
    for i, out in zip(order, outs, strict=False):
        assert out.token_ids == expected[i][0]


def test_adapters_change_outputs(setup):
    """Guard against a vacuous pass: every adapter must move the logits well beyond the tolerance."""
    llm, expected = setup
    engine = llm.engine
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"base-{i}", prompt, one, None)
    engine.step()
    for i, lora in enumerate(LORAS):
        diff = (engine.last_logits[f"base-{i}"] - expected[i][1][0]).abs().max().item()
        if lora is None:
            assert diff < 1e-4
        else:
            assert diff > 0.05, f"adapter {lora} barely changes the logits ({diff})"
