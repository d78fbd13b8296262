"""The engine's decode step captured in CUDA graphs (CUDA only; `pytest -m gpu` on a GPU host).

The static, padded path these graphs replay is tested on CPU in ``tests/test_decode_graphs.py``.
"""

from __future__ import annotations

import pytest
import torch

from loraplex import LLM, SamplingParams
from loraplex.engine.cuda_graphs import capture_sizes
from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
)
from tests.hf_reference import HFReference
from tests.tiny_models import llm_with_adapters, ranked, write_model_and_adapters

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ADAPTERS = {"a": (8, ALL_MODULES), "b": (16, ("q_proj", "v_proj")), "c": (4, ("down_proj",))}
PROMPTS = [[5, 17, 300, 42, 7], [900, 12], [3, 3, 3, 40, 41, 42, 43, 44, 45], [7], [60, 61, 62]]
LORAS = ["a", None, "b", "c", "a"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("graphs_gpu")
    spec = TinyModelSpec(
        arch="qwen2",
        seed=11,
        hidden_size=256,
        intermediate_size=512,
        num_heads=8,
        num_kv_heads=2,
        num_layers=3,
    )
    return write_model_and_adapters(root, spec, ranked(ADAPTERS))


def _llm(model_dir, dtype: str, enforce_eager: bool) -> LLM:
    model, paths = model_dir
    # Two slots for three adapters: adapters are loaded into slots after the capture.
    return llm_with_adapters(
        model,
        paths,
        dtype=dtype,
        device="cuda",
        max_loras=2,
        max_lora_rank=16,
        max_num_seqs=12,
        enforce_eager=enforce_eager,
    )


def test_graphs_are_captured_for_every_size(model_dir) -> None:
    llm = _llm(model_dir, "float16", enforce_eager=False)
    graphs = llm.engine.runner.decode_graphs
    assert graphs is not None and graphs.capture_enabled
    assert graphs.sizes == capture_sizes(12) == [1, 2, 4, 8, 12]
    assert set(graphs.graphs) == {(s, lo) for s in graphs.sizes for lo in (True, False)}
    assert _llm(model_dir, "float16", enforce_eager=True).engine.runner.decode_graphs is None


def test_graph_replay_matches_hf_peft(model_dir) -> None:
    """fp32 on the GPU through the captured graphs, token for token against HF + PEFT on CPU."""
    model, paths = model_dir
    ref = HFReference(model, paths)
    expected = [ref.greedy(p, lo, 6)[0] for p, lo in zip(PROMPTS, LORAS, strict=True)]
    llm = _llm(model_dir, "float32", enforce_eager=False)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.generate(PROMPTS, params, lora=LORAS)
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.runner.decode_graphs.replays > 0


TOL = {"float32": (1e-4, 1e-4), "float16": (5e-2, 5e-2), "bfloat16": (2.5e-1, 1e-1)}


@pytest.mark.parametrize("dtype", list(TOL))
def test_graph_replay_matches_eager(model_dir, dtype: str) -> None:
    """Same logits from replay as from the eager step, batch after batch, while adapters move
    between slots and batches shrink (padding rows reused).  In half precision a padded GEMM may
    round differently and flip a near-tied greedy token; a request is compared until then."""
    eager, graphed = _llm(model_dir, dtype, True), _llm(model_dir, dtype, False)
    params = [SamplingParams(temperature=0, max_tokens=3 + i, ignore_eos=True) for i in range(5)]
    for llm in (eager, graphed):
        for i, (p, lo) in enumerate(zip(PROMPTS, LORAS, strict=True)):
            llm.engine.add_request(f"r{i}", p, params[i], lo)
    atol, rtol = TOL[dtype]
    diverged: set[str] = set()
    compared = 0
    while eager.engine.has_unfinished():
        want = {o.request_id: o.new_token_ids for o in eager.engine.step()}
        got = {o.request_id: o.new_token_ids for o in graphed.engine.step()}
        assert want.keys() == got.keys()
        for rid, row in eager.engine.last_logits.items():
            if rid not in diverged:
                torch.testing.assert_close(
                    graphed.engine.last_logits[rid], row, atol=atol, rtol=rtol
                )
                compared += 1
            if got[rid] != want[rid]:
                diverged.add(rid)
    if dtype == "float32":
        assert not diverged
    assert not graphed.engine.has_unfinished()
    assert graphed.engine.runner.decode_graphs.replays > 0
    assert compared >= 10
