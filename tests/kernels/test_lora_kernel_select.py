"""Choosing the LoRA kernels (``LORAPLEX_LORA_KERNEL``), the combined ops every namespace offers,
the decode plan made once per step, and the engine run through v2 (interpreted on CPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from loraplex import SamplingParams  # noqa: E402
from loraplex.forward_context import LoraMeta  # noqa: E402
from loraplex.kernels import dispatch, triton_lora, triton_lora_v2  # noqa: E402
from loraplex.lora import apply  # noqa: E402
from loraplex.tooling.demo import ALL_MODULES, TinyModelSpec  # noqa: E402
from tests.tiny_models import llm_with_adapters, write_model_and_adapters  # noqa: E402

NAMES = (
    "sgmv_shrink", "sgmv_expand", "bgmv_shrink", "bgmv_expand", "sgmv_shrink_fused",
    "sgmv_expand_fused", "bgmv_shrink_fused", "bgmv_expand_fused", "sgmv_lora", "bgmv_lora",
    "bgmv_plan", "store_kv", "paged_decode_attention", "prefill_attention",
)  # fmt: skip


@pytest.fixture
def triton_on_cpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("LORAPLEX_TRITON_ON_CPU", "1")  # TRITON_INTERPRET=1 comes from conftest
    monkeypatch.delenv("LORAPLEX_DISABLE_TRITON", raising=False)
    monkeypatch.delenv("LORAPLEX_LORA_KERNEL", raising=False)
    return monkeypatch


def test_env_selects_the_lora_kernels(triton_on_cpu: pytest.MonkeyPatch) -> None:
    v1 = dispatch.get_ops("cpu")
    assert v1.lora_kernel == "v1" and v1.bgmv_shrink is triton_lora.bgmv_shrink
    triton_on_cpu.setenv("LORAPLEX_LORA_KERNEL", "v2")
    v2 = dispatch.get_ops("cpu")
    assert v2.lora_kernel == "v2" and v2.bgmv_lora is triton_lora_v2.bgmv_lora
    assert v2.paged_decode_attention is v1.paged_decode_attention  # only LoRA names differ
    assert dispatch.get_ops("cpu", lora_kernel="v1").bgmv_shrink is triton_lora.bgmv_shrink
    for ns in (v1, v2, dispatch._torch_ops()):
        assert all(callable(getattr(ns, n)) for n in NAMES)
    triton_on_cpu.setenv("LORAPLEX_LORA_KERNEL", "v3")
    with pytest.raises(ValueError, match="LORAPLEX_LORA_KERNEL"):
        dispatch.get_ops("cpu")


@pytest.mark.parametrize("kernel", ("torch", "v1", "v2"))
def test_combined_ops_equal_shrink_then_expand(kernel: str, triton_on_cpu) -> None:
    if kernel == "torch":
        triton_on_cpu.setenv("LORAPLEX_DISABLE_TRITON", "1")
    ops = dispatch.get_ops("cpu", None if kernel == "torch" else kernel)
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(3, 8, 32, generator=gen) for _ in range(2)]
    b = [torch.randn(3, 24, 8, generator=gen) for _ in range(2)]
    ranks = [torch.tensor([8, 0, 5]), torch.tensor([3, 8, 0])]
    x, y0 = torch.randn(6, 32, generator=gen), torch.randn(6, 50, generator=gen)
    idx = torch.tensor([2, -1, 0, 1, 2, 0])
    seg = (torch.tensor([0, 2, 3, 6]), torch.tensor([2, -1, 0]))
    for kind, meta in (("bgmv", (idx,)), ("sgmv", seg)):
        y_ref, y = y0.clone(), y0.clone()
        vs = [torch.zeros(6, 8) for _ in range(2)]
        getattr(dispatch._torch_ops(), f"{kind}_shrink_fused")(x, a, *meta, ranks, vs)
        getattr(dispatch._torch_ops(), f"{kind}_expand_fused")(vs, b, *meta, ranks, y_ref, [26, 0])
        getattr(ops, f"{kind}_lora")(x, a, b, *meta, ranks, y, [26, 0])
        torch.testing.assert_close(y, y_ref)
        assert not torch.equal(y, y0)


def test_decode_plan_is_made_once_per_step(triton_on_cpu) -> None:
    ops = dispatch.get_ops("cpu", "v2")
    indices = torch.tensor([1, -1, 0, 1], dtype=torch.int32)
    step = LoraMeta(True, False, None, None, indices)
    plan = apply.decode_plan(step, ops, 2)
    assert plan is not None and apply.decode_plan(step, ops, 2) is plan
    next_step = LoraMeta(True, False, None, None, indices)  # a new step: a new plan
    assert apply.decode_plan(next_step, ops, 2) is not plan
    assert apply.decode_plan(step, dispatch.get_ops("cpu", "v1"), 2) is None


ADAPTERS = {
    "all-r8": {"rank": 8, "alpha": 16, "targets": ALL_MODULES, "seed": 0},
    "qv-r4": {"rank": 4, "alpha": 8, "targets": ("q_proj", "v_proj"), "seed": 1},
}


def test_engine_through_v2_matches_torch_path(tmp_path, triton_on_cpu) -> None:
    """Prefill (SGMV), eager decode and the static (CUDA-graph) decode path with padded rows, run
    through the interpreted v2 kernels, give the torch path's tokens."""
    from loraplex.kvcache.block_allocator import blocks_for

    spec = TinyModelSpec(seed=3, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2)
    model, paths = write_model_and_adapters(tmp_path, spec, ADAPTERS)
    prompts, loras = [[5, 17, 300, 42], [900, 12], [3, 3, 40]], ["all-r8", None, "qv-r4"]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    results = []
    for kernel, graphs in (("torch", False), ("v2", False), ("v2", True)):
        if kernel == "torch":
            triton_on_cpu.setenv("LORAPLEX_DISABLE_TRITON", "1")
        else:
            triton_on_cpu.delenv("LORAPLEX_DISABLE_TRITON", raising=False)
            triton_on_cpu.setenv("LORAPLEX_LORA_KERNEL", kernel)
        llm = llm_with_adapters(model, paths, dtype="float32", device="cpu", max_loras=2)
        assert getattr(llm.engine.runner.ops, "lora_kernel", "torch") == kernel
        if graphs:
            eng = llm.engine
            width = blocks_for(eng.max_model_len, eng.config.block_size)
            eng.runner.enable_decode_graphs(8, width, capture=False)
        results.append([o.token_ids for o in llm.generate(prompts, params, lora=loras)])
    assert results[1] == results[0] and results[2] == results[0]


def test_warm_up_launches_every_group_and_shape(triton_on_cpu) -> None:
    from loraplex.kernels.lora_warmup import _prefill_shapes, warm_up_lora_kernels
    from loraplex.model.config import ModelConfig

    cfg = ModelConfig.from_hf_dict(
        {"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32,
         "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64}
    )  # fmt: skip
    cpu = torch.device("cpu")
    report = warm_up_lora_kernels(cfg, 3, 8, torch.float32, cpu, (1, 2, 2), 8, kernel="v2")
    per_group = 2 + len(_prefill_shapes(8))  # decode sizes 1 and 2, then the prefill shapes
    assert report.kernel == "v2" and report.launches == 4 * per_group and report.tuned == ()
    triton_on_cpu.setenv("LORAPLEX_DISABLE_TRITON", "1")
    assert warm_up_lora_kernels(cfg, 3, 8, torch.float32, cpu, (1,), 8).launches == 0
