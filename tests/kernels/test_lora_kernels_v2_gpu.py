"""GPU code path of the v2 LoRA kernels: an sm_90 compile check that runs anywhere, and CUDA-only
tests at Llama-7B sizes, under CUDA-graph capture, and of the start-up tuner (skipped without
CUDA)."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import lora_tuning  # noqa: E402
from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_lora_v2 as v2  # noqa: E402

# The conftest's prelude records the launches of the modules it knows; v2's kernels too.
_RECORD_V2 = """
from loraplex.kernels import triton_lora_v2_kernels
for _name, _obj in list(vars(triton_lora_v2_kernels).items()):
    if isinstance(_obj, JITFunction) and _name.endswith("_kernel"):
        setattr(triton_lora_v2_kernels, _name, _Recorder(_obj))
from loraplex.kernels import triton_lora_v2 as L  # GPU default configs: not interpreted here
"""


def test_v2_kernels_compile_for_sm90(sm90_compile) -> None:
    """Both kernels build for Hopper with the GPU default configs: 1-3 slices, decode (rows
    through the device sort) and prefill, all dtypes, int32/int64 metadata, rank-1 storage."""
    out = sm90_compile(
        _RECORD_V2
        + """
cases = [
    (torch.bfloat16, 64, 4096, 4096, torch.int32, 3, 32),
    (torch.bfloat16, 64, 11008, 4096, torch.int32, 1, 64),
    (torch.float16, 64, 4096, 11008, torch.int64, 2, 8),
    (torch.float32, 16, 4096, 4096, torch.int32, 1, 1),
    (torch.float16, 1, 48, 80, torch.int64, 2, 4),
]
for dt, r_store, h_in, h_out, idt, n, t in cases:
    x = torch.zeros(t, h_in, dtype=dt)
    a = torch.zeros(4, r_store, h_in, dtype=dt)
    b = torch.zeros(4, h_out, r_store, dtype=dt)
    y = torch.zeros(t, n * h_out, dtype=dt)
    rk = torch.ones(4, dtype=idt)
    ss, sl = torch.tensor([0, t // 2, t], dtype=idt), torch.tensor([0, -1], dtype=idt)
    idx = torch.zeros(t, dtype=idt)
    L.bgmv_lora(x, [a] * n, [b] * n, idx, [rk] * n, y)
    L.sgmv_lora(x, [a] * n, [b] * n, ss, sl, [rk] * n, y, max_seg_len=t)
"""
    )
    assert int(out.split("compiled ")[-1].split()[0]) >= 10, out  # v2's own launches compiled


# ------------------------------------------------------------------------------ GPU-only tests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _stack(n_slots, r_store, h_in, h_out, dtype, gen, zero_frac=0.0):
    a = torch.randn(n_slots, r_store, h_in, device="cuda", generator=gen) / h_in**0.5
    b = torch.randn(n_slots, h_out, r_store, device="cuda", generator=gen) / r_store**0.5
    choices = torch.tensor([8, 16, 32, r_store], device="cuda")
    ranks = choices[torch.randint(0, 4, (n_slots,), device="cuda", generator=gen)]
    ranks[torch.rand(n_slots, device="cuda", generator=gen) < zero_frac] = 0
    return a.to(dtype), b.to(dtype), ranks


def _twin(x, a_s, b_s, rk_s, meta, y, kind):
    off = 0
    for a, b, rk in zip(a_s, b_s, rk_s, strict=True):
        v = torch.zeros(x.shape[0], a.shape[1], device="cuda")
        getattr(ref, f"{kind}_shrink")(x, a, *meta, rk, v)
        getattr(ref, f"{kind}_expand")(v, b, *meta, rk, y, off)
        off += b.shape[1]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dname", ["fp16", "bf16"])
def test_llama7b_shapes_gpu(dname: str) -> None:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dname]
    gen = torch.Generator(device="cuda").manual_seed(0)
    h, inter, n_slots, r_store = 4096, 11008, 32, 64
    atol, rtol = (3e-2, 2e-2) if dtype == torch.float16 else (1e-1, 5e-2)
    groups = [
        ([_stack(n_slots, r_store, h, h, dtype, gen, 0.2) for _ in range(3)], h),
        ([_stack(n_slots, r_store, h, inter, dtype, gen) for _ in range(2)], h),
        ([_stack(n_slots, r_store, inter, h, dtype, gen)], inter),
    ]
    lens = torch.randint(1, 256, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    seg = (
        torch.tensor([0, *itertools.accumulate(lens)], device="cuda"),
        torch.randint(-1, n_slots, (16,), device="cuda", generator=gen),
    )
    for batch in (1, 32, 64, 256):
        idx = torch.randint(-1, n_slots, (batch,), device="cuda", generator=gen)
        for kind, meta, t in (("bgmv", (idx,), batch), ("sgmv", seg, sum(lens))):
            kw = {"max_seg_len": max(lens)} if kind == "sgmv" else {}
            for stacks, h_in in groups:
                a_s, b_s, rk_s = (list(z) for z in zip(*stacks, strict=True))
                x = torch.randn(t, h_in, device="cuda", generator=gen).to(dtype)
                width = sum(b.shape[1] for b in b_s)
                y = torch.randn(t, width, device="cuda", generator=gen).to(dtype)
                y_ref = y.clone()
                getattr(v2, f"{kind}_lora")(x, a_s, b_s, *meta, rk_s, y, **kw)
                _twin(x, a_s, b_s, rk_s, meta, y_ref, kind)
                torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture_replay_gpu() -> None:
    """The decode plan (device sort) and both kernels captured once, replayed with new unsorted
    indices, ranks and inputs written in place; a plan built outside the capture is not reused."""
    dtype, gen = torch.float16, torch.Generator(device="cuda").manual_seed(0)
    t, h, n_slots, r_store = 64, 1024, 8, 32
    stacks = [_stack(n_slots, r_store, h, h // (1 + (i > 0)), dtype, gen) for i in range(3)]
    a_s, b_s, rk_s = (list(z) for z in zip(*stacks, strict=True))
    x = torch.zeros(t, h, device="cuda", dtype=dtype)
    idx = torch.zeros(t, dtype=torch.int32, device="cuda")
    width = sum(b.shape[1] for b in b_s)
    y_init = torch.zeros(t, width, device="cuda", dtype=dtype)
    y = torch.zeros_like(y_init)

    def step() -> None:
        y.copy_(y_init)
        plan = v2.bgmv_plan(idx, n_slots)
        v2.bgmv_lora(x, a_s, b_s, idx, rk_s, y, plan=plan)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(3):
        x.copy_(torch.randn(t, h, device="cuda", generator=gen))
        y_init.copy_(torch.randn(t, width, device="cuda", generator=gen))
        idx.copy_(torch.randint(-1, n_slots, (t,), device="cuda", generator=gen))
        for rk in rk_s:
            rk.copy_(torch.randint(0, r_store + 1, (n_slots,), device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        y_ref = y_init.clone()
        _twin(x, a_s, b_s, rk_s, (idx,), y_ref, "bgmv")
        torch.testing.assert_close(y, y_ref, atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_tuner_picks_a_config_that_is_correct_gpu() -> None:
    from loraplex.kernels.lora_warmup import warm_up_lora_kernels
    from loraplex.model.config import ModelConfig

    cfg = ModelConfig.from_hf_dict(
        {"architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 512,
         "intermediate_size": 1376, "num_hidden_layers": 1, "num_attention_heads": 8,
         "num_key_value_heads": 8, "max_position_embeddings": 256}
    )  # fmt: skip
    lora_tuning.clear_tuned()
    report = warm_up_lora_kernels(
        cfg, num_slots=8, max_rank=64, dtype=torch.bfloat16, device=torch.device("cuda"),
        decode_sizes=(1, 8, 32), prefill_tokens=256, kernel="v2", tune=True,
    )  # fmt: skip
    assert report.tuned and set(report.tuned) <= set(lora_tuning.tuned())
