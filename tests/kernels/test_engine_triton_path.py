"""The engine driven through the Triton kernels (interpreted on CPU) still matches HF + PEFT.

Each test forces the interpreter (``interpreted.run_interpreted``), so it holds on a CUDA host
too, where the kernels would otherwise be compiled for the GPU and ``device="cpu"`` would get the
torch twins.
"""

from __future__ import annotations

from pathlib import Path

from loraplex import SamplingParams
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec
from tests.hf_reference import HFReference
from tests.kernels.interpreted import run_interpreted
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


def test_triton_path_matches_hf_peft(tmp_path, monkeypatch):
    run_interpreted(_triton_path_matches_hf_peft, tmp_path, monkeypatch)


def _triton_path_matches_hf_peft(tmp_path: Path) -> None:
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


def test_static_decode_path_through_triton_kernels(tmp_path, monkeypatch):
    run_interpreted(_static_decode_path_through_triton_kernels, tmp_path, monkeypatch)


def _static_decode_path_through_triton_kernels(tmp_path: Path) -> None:
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


def test_chunked_and_prefix_cached_prefill_through_triton(tmp_path, monkeypatch):
    run_interpreted(_chunked_and_prefix_cached_prefill_through_triton, tmp_path, monkeypatch)


def _chunked_and_prefix_cached_prefill_through_triton(tmp_path: Path) -> None:
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


def test_a_fresh_process_runs_the_body_where_kernels_are_compiled(tmp_path, monkeypatch):
    """The CUDA-host branch: the body runs in a new process with the interpreter forced (here
    it would run in-process too; forcing the branch checks the subprocess wiring)."""
    run_interpreted(_backend_is_triton_on_cpu, tmp_path, monkeypatch, in_process=False)
    assert (tmp_path / "backend").read_text() == "triton True"


def _backend_is_triton_on_cpu(tmp_path: Path) -> None:
    import torch

    from loraplex.kernels import get_ops
    from tests.kernels.interpreted import kernels_interpreted

    assert not torch.cuda.is_available()
    (tmp_path / "backend").write_text(f"{get_ops('cpu').backend} {kernels_interpreted()}")
