"""Decode steps through the static, padded buffers the CUDA graphs replay from.

On CPU the graphs themselves cannot be captured, so these tests run the same static path eagerly
(``capture=False``): copying a batch into fixed buffers, padding to the next captured size with
rows that write no K/V and use no adapter, and reading the real rows back.  The engine must
produce exactly what the plain eager path produces.  The capture itself is tested on CUDA in
``tests/kernels/test_decode_graphs_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.config import EngineConfig
from loraplex.engine.cuda_graphs import StaticDecodeInputs, capture_sizes, padded_size
from loraplex.errors import InvalidRequestError
from loraplex.kvcache.block_allocator import blocks_for
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

SPEC = TinyModelSpec(seed=3, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
ADAPTERS = {"a": (8, ALL_MODULES), "b": (4, ("q_proj", "v_proj")), "c": (2, ("down_proj",))}
PROMPTS = [[5, 17, 300, 42, 7], [900, 12], [3, 3, 3, 40, 41, 42, 43, 44, 45], [7], [60, 61, 62]]
LORAS = ["a", None, "b", "c", "a"]


def test_capture_sizes() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    assert capture_sizes(64)[-3:] == [48, 56, 64]
    assert capture_sizes(0) == []


def test_padded_size() -> None:
    sizes = capture_sizes(30)
    assert [padded_size(n, sizes) for n in (1, 3, 4, 5, 9, 24, 25, 30)] == [
        1,
        4,
        4,
        8,
        16,
        24,
        30,
        30,
    ]
    assert padded_size(31, sizes) is None


def test_engine_config_rejects_bad_graph_size() -> None:
    with pytest.raises(InvalidRequestError):
        EngineConfig(max_cuda_graph_batch_size=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    return write_model_and_adapters(tmp_path_factory.mktemp("graphs"), SPEC, ranked(ADAPTERS))


def _llm(model_dir: tuple[Path, dict[str, Path]], graphs: int | None) -> LLM:
    model, paths = model_dir
    # Two device slots for three adapters: slots are refilled between steps.
    llm = llm_with_adapters(
        model, paths, dtype="float32", device="cpu", max_loras=2, max_lora_rank=8, block_size=4
    )
    if graphs is not None:
        eng = llm.engine
        width = blocks_for(eng.max_model_len, eng.config.block_size)
        assert eng.runner.enable_decode_graphs(graphs, width, capture=False) == 0.0
    return llm


def _run(llm: LLM) -> tuple[list[list[int]], list[list[int]]]:
    greedy = SamplingParams(temperature=0, max_tokens=7, ignore_eos=True)
    sampled = [
        SamplingParams(temperature=0.9, top_p=0.9, seed=i, max_tokens=7, ignore_eos=True)
        for i in range(len(PROMPTS))
    ]
    a = [o.token_ids for o in llm.generate(PROMPTS, greedy, lora=LORAS)]
    b = [o.token_ids for o in llm.generate(PROMPTS, sampled, lora=LORAS)]
    return a, b


@pytest.mark.parametrize("max_graph_batch", [8, 3])
def test_static_decode_path_matches_eager(model_dir, max_graph_batch: int) -> None:
    """Batches of 5 padded to 8, and (with 3) batches too big for a graph falling back to eager
    while the smaller ones later in the run replay."""
    eager = _llm(model_dir, None)
    static = _llm(model_dir, max_graph_batch)
    expected = _run(eager)
    assert _run(static) == expected
    assert static.engine.runner.decode_graphs.replays > 0
    assert eager.engine.runner.decode_graphs is None


def test_static_decode_logits_match_eager(model_dir) -> None:
    eager, static = _llm(model_dir, None), _llm(model_dir, 8)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    for llm in (eager, static):
        for i, (p, lo) in enumerate(zip(PROMPTS, LORAS, strict=True)):
            llm.engine.add_request(f"r{i}", p, params, lo)
        llm.engine.step()  # prefill
        llm.engine.step()  # first decode step
    assert static.engine.runner.decode_graphs.replays == 1
    for rid, row in eager.engine.last_logits.items():
        torch.testing.assert_close(static.engine.last_logits[rid], row, atol=1e-5, rtol=1e-5)


def test_padding_rows_are_neutral_after_a_larger_batch(model_dir) -> None:
    """Padding rows are reset every time: stale slots from an earlier, larger batch would
    otherwise write K/V into blocks that now belong to someone else."""
    static = _llm(model_dir, 8)
    eng = static.engine
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    for i, p in enumerate(PROMPTS):
        eng.add_request(f"big{i}", p, params)
    while eng.has_unfinished():
        eng.step()
    inputs: StaticDecodeInputs = eng.runner.decode_graphs.inputs
    assert int((inputs.slot_mapping[:5] >= 0).sum()) == 5  # the last decode step had 5 rows
    for i in range(3):
        eng.add_request(f"small{i}", PROMPTS[i], params, LORAS[i])
    eng.step()  # prefill
    # Zeroed, so every slot this step writes shows, even one rewritten with the value it held.
    eng.kv_cache.data.zero_()
    eng.step()  # decode of 3 rows, padded to the captured size 4
    assert int(inputs.slot_mapping[3]) == -1
    assert int(inputs.context_lens[3]) == 0
    assert int(inputs.lora_indices[3]) == -1
    assert int(inputs.input_ids[3]) == 0
    changed = (eng.kv_cache.data != 0).flatten(4).any(-1)  # [layers, 2, blocks, offset]
    assert int(changed.any(dim=1).any(dim=0).sum()) == 3  # one new slot per real row
