"""The engine driven through the Triton kernels (interpreted on CPU) still matches HF + PEFT."""

from __future__ import annotations

import pytest

from loraplex import SamplingParams
from loraplex.demo import ALL_MODULES, TinyModelSpec
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, write_model_and_adapters

ADAPTERS = {
    "all-r8": {"rank": 8, "alpha": 16, "targets": ALL_MODULES, "seed": 0},
    "qv-r4-rs": {
        "rank": 4,
        "alpha": 8,
        "targets": ("q_proj", "v_proj"),
        "use_rslora": True,
        "seed": 1,
    },
}
PROMPTS = [[5, 17, 300, 42, 7], [900, 12], [3, 3, 3, 40]]
LORAS = ["all-r8", None, "qv-r4-rs"]


@pytest.fixture
def triton_on_cpu(monkeypatch):
    monkeypatch.setenv("LORAPLEX_TRITON_ON_CPU", "1")  # TRITON_INTERPRET=1 comes from conftest
    monkeypatch.delenv("LORAPLEX_DISABLE_TRITON", raising=False)


def test_triton_path_matches_hf_peft(tmp_path, triton_on_cpu):
    spec = TinyModelSpec(
        arch="qwen2", seed=7, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2
    )
    model, paths = write_model_and_adapters(tmp_path, spec, ADAPTERS)
    ref = HFReference(model, paths)
    expected = [ref.greedy(p, lo, 4)[0] for p, lo in zip(PROMPTS, LORAS, strict=False)]
    llm = llm_with_adapters(
        model, paths, dtype="float32", device="cpu", max_loras=2, max_lora_rank=8, block_size=4
    )
    assert llm.engine.runner.ops.backend == "triton"
    outs = llm.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), lora=LORAS
    )
    assert [o.token_ids for o in outs] == expected


def test_static_decode_path_through_triton_kernels(tmp_path, triton_on_cpu):
    """The CUDA-graph decode path (static buffers, rows padded to the next captured size with
    slot -1, context 0 and adapter -1, per-row BGMV) run eagerly through the interpreted Triton
    kernels gives the same tokens as the plain eager path."""
    from loraplex.kvcache.block_allocator import blocks_for

    spec = TinyModelSpec(seed=5, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
    model, paths = write_model_and_adapters(tmp_path, spec, ADAPTERS)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    results = []
    for graphs in (False, True):
        llm = llm_with_adapters(
            model, paths, dtype="float32", device="cpu", max_loras=2, max_lora_rank=8
        )
        assert llm.engine.runner.ops.backend == "triton"
        if graphs:
            eng = llm.engine
            width = blocks_for(eng.max_model_len, eng.config.block_size)
            eng.runner.enable_decode_graphs(8, width, capture=False)
        results.append([o.token_ids for o in llm.generate(PROMPTS, params, lora=LORAS)])
    assert llm.engine.runner.decode_graphs.replays > 0
    assert results[1] == results[0]


def test_chunked_and_prefix_cached_prefill_through_triton(tmp_path, triton_on_cpu):
    """Chunks after the first, and prompts starting from cached blocks, run SGMV over segments
    of rows whose positions do not start at 0; through the interpreted kernels they still
    match HF + PEFT."""
    spec = TinyModelSpec(seed=9, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
    model, paths = write_model_and_adapters(tmp_path, spec, ADAPTERS)
    shared = [(i * 41 + 3) % 900 for i in range(11)]
    prompts = [shared + [1, 2], shared + [7], shared[:9] + [5, 5, 5, 5]]
    loras = ["all-r8", "all-r8", None]
    ref = HFReference(model, paths)
    llm = llm_with_adapters(
        model,
        paths,
        dtype="float32",
        device="cpu",
        max_loras=2,
        max_lora_rank=8,
        block_size=4,
        max_num_batched_tokens=6,
    )
    assert llm.engine.runner.ops.backend == "triton"
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    for p, lo in zip(prompts, loras, strict=True):
        assert llm.generate([p], params, lora=lo)[0].token_ids == ref.greedy(p, lo, 3)[0]
    assert llm.engine.scheduler.prefix_hit_tokens == 8
