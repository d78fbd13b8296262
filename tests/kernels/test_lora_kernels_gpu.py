"""GPU code path of the LoRA kernels: an sm_90 compile check that runs anywhere, and CUDA-only
tests at Llama-7B sizes and under CUDA-graph capture (skipped on hosts without CUDA)."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_lora as tri  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------- GPU code path without a GPU


def test_lora_kernels_compile_for_sm90(sm90_compile) -> None:
    """The LoRA kernels build for Hopper: 1-3 slices, all dtypes, int32/int64 metadata, and
    rank-1 storage (some strides then specialize to the constant 1)."""
    sm90_compile(
        """
        L = triton_lora
        cases = [
            (torch.float16, 64, 4096, 4096, torch.int32, 1),
            (torch.float16, 64, 4096, 4096, torch.int32, 3),
            (torch.bfloat16, 64, 4096, 4096, torch.int32, 3),
            (torch.float32, 64, 4096, 4096, torch.int32, 1),
            (torch.float16, 1, 48, 80, torch.int64, 2),
        ]
        for dt, r_store, h_in, h_out, idt, n in cases:
            x = torch.zeros(8, h_in, dtype=dt)
            a = torch.zeros(4, r_store, h_in, dtype=dt)
            b = torch.zeros(4, h_out, r_store, dtype=dt)
            v = torch.zeros(8, r_store, dtype=dt)
            y = torch.zeros(8, 3 * h_out, dtype=dt)
            rk = torch.ones(4, dtype=idt)
            ss, sl = torch.tensor([0, 3, 8], dtype=idt), torch.tensor([0, -1], dtype=idt)
            idx = torch.zeros(8, dtype=idt)
            L.sgmv_shrink_fused(x, [a] * n, ss, sl, [rk] * n, [v] * n, max_seg_len=5)
            L.bgmv_shrink_fused(x, [a] * n, idx, [rk] * n, [v] * n)
            L.sgmv_expand_fused([v] * n, [b] * n, ss, sl, [rk] * n, y)
            L.bgmv_expand_fused([v] * n, [b] * n, idx, [rk] * n, y)
        """
    )


# ------------------------------------------------------------------------------ GPU-only tests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_lora_stack(n_slots, r_store, h_in, h_out, dtype, gen, zero_frac=0.0):
    a = torch.randn(n_slots, r_store, h_in, device="cuda", generator=gen) / h_in**0.5
    b = torch.randn(n_slots, h_out, r_store, device="cuda", generator=gen) / r_store**0.5
    choices = torch.tensor([8, 16, 32, r_store], device="cuda")
    ranks = choices[torch.randint(0, 4, (n_slots,), device="cuda", generator=gen)]
    ranks[torch.rand(n_slots, device="cuda", generator=gen) < zero_frac] = 0
    return a.to(dtype), b.to(dtype), ranks


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dname", ["fp16", "bf16"])
def test_llama7b_shapes_gpu(dname: str) -> None:
    """q/k/v and gate/up fused, down single, at Llama-7B sizes: decode (BGMV) and prefill (SGMV)."""
    dtype, gen = DTYPES[dname], torch.Generator(device="cuda").manual_seed(0)
    h, inter, n_slots, r_store = 4096, 11008, 32, 64
    atol, rtol = (3e-2, 2e-2) if dtype == torch.float16 else (1e-1, 5e-2)
    qkv = [_gpu_lora_stack(n_slots, r_store, h, h, dtype, gen, 0.2) for _ in range(3)]
    gate_up = [_gpu_lora_stack(n_slots, r_store, h, inter, dtype, gen) for _ in range(2)]
    down = [_gpu_lora_stack(n_slots, r_store, inter, h, dtype, gen)]
    lens = torch.randint(1, 256, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    seg_starts = torch.tensor([0, *itertools.accumulate(lens)], device="cuda")
    seg_slots = torch.randint(-1, n_slots, (16,), device="cuda", generator=gen)
    metas = {
        "bgmv": (torch.randint(-1, n_slots, (256,), device="cuda", generator=gen),),
        "sgmv": (seg_starts, seg_slots),
    }
    for kind, meta in metas.items():
        t = meta[0].shape[0] if kind == "bgmv" else sum(lens)
        kw = {"max_seg_len": max(lens)} if kind == "sgmv" else {}
        for group, h_in in ((qkv, h), (gate_up, h), (down, inter)):
            a_s, b_s, rk_s = zip(*group, strict=True)
            x = torch.randn(t, h_in, device="cuda", generator=gen).to(dtype)
            vs = [torch.zeros(t, r_store, device="cuda", dtype=dtype) for _ in group]
            vs_ref = [v.clone() for v in vs]
            y = torch.randn(t, sum(b.shape[1] for b in b_s), device="cuda", generator=gen).to(dtype)
            y_ref = y.clone()
            getattr(tri, f"{kind}_shrink_fused")(x, a_s, *meta, rk_s, vs, **kw)
            getattr(tri, f"{kind}_expand_fused")(vs, b_s, *meta, rk_s, y, **kw)
            off = 0
            for a, b, rk, v in zip(a_s, b_s, rk_s, vs_ref, strict=True):
                getattr(ref, f"{kind}_shrink")(x, a, *meta, rk, v)
                getattr(ref, f"{kind}_expand")(v, b, *meta, rk, y_ref, off)
                off += b.shape[1]
            for v, v_ref in zip(vs, vs_ref, strict=True):
                torch.testing.assert_close(v, v_ref, atol=atol, rtol=rtol)
            torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture_replay_gpu() -> None:
    """Capture decode + prefill LoRA launches once, then replay with new metadata in place."""
    dtype, gen = torch.float16, torch.Generator(device="cuda").manual_seed(0)
    t, h, n_slots, r_store = 64, 1024, 8, 32
    qkv = [_gpu_lora_stack(n_slots, r_store, h, h // (1 + (i > 0)), dtype, gen) for i in range(3)]
    a_s, b_s, rk_s = (list(z) for z in zip(*qkv, strict=True))
    x = torch.zeros(t, h, device="cuda", dtype=dtype)
    idx = torch.zeros(t, dtype=torch.int64, device="cuda")
    seg_starts = torch.zeros(5, dtype=torch.int64, device="cuda")
    seg_slots = torch.zeros(4, dtype=torch.int64, device="cuda")
    vs = [torch.zeros(t, r_store, device="cuda", dtype=dtype) for _ in range(3)]
    v_pre = torch.zeros(t, r_store, device="cuda", dtype=dtype)
    width = sum(b.shape[1] for b in b_s)
    y_init = torch.zeros(t, width, device="cuda", dtype=dtype)
    y, y_pre = torch.zeros_like(y_init), torch.zeros(t, h, device="cuda", dtype=dtype)

    def step() -> None:
        y.copy_(y_init)
        y_pre.copy_(y_init[:, :h])
        tri.bgmv_shrink_fused(x, a_s, idx, rk_s, vs)
        tri.bgmv_expand_fused(vs, b_s, idx, rk_s, y)
        tri.sgmv_shrink(x, a_s[0], seg_starts, seg_slots, rk_s[0], v_pre, max_seg_len=t)
        tri.sgmv_expand(v_pre, b_s[0], seg_starts, seg_slots, rk_s[0], y_pre, max_seg_len=t)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compile + warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for trial in range(3):
        x.copy_(torch.randn(t, h, device="cuda", generator=gen))
        y_init.copy_(torch.randn(t, width, device="cuda", generator=gen))
        idx.copy_(torch.randint(-1, n_slots, (t,), device="cuda", generator=gen))
        for rk in rk_s:
            rk.copy_(torch.randint(0, r_store + 1, (n_slots,), device="cuda", generator=gen))
        perm = torch.randperm(t - 1, generator=torch.Generator().manual_seed(trial))
        cuts = sorted((perm[:3] + 1).tolist())
        seg_starts.copy_(torch.tensor([0, *cuts, t]))
        seg_slots.copy_(torch.randint(-1, n_slots, (4,), device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        vs_ref = [torch.zeros_like(v) for v in vs]
        y_ref, y_pre_ref, v_pre_ref = y_init.clone(), y_init[:, :h].clone(), torch.zeros_like(v_pre)
        for i, off in enumerate((0, h, h + h // 2)):
            ref.bgmv_shrink(x, a_s[i], idx, rk_s[i], vs_ref[i])
            ref.bgmv_expand(vs_ref[i], b_s[i], idx, rk_s[i], y_ref, off)
        ref.sgmv_shrink(x, a_s[0], seg_starts, seg_slots, rk_s[0], v_pre_ref)
        ref.sgmv_expand(v_pre_ref, b_s[0], seg_starts, seg_slots, rk_s[0], y_pre_ref)
        torch.testing.assert_close(y, y_ref, atol=3e-2, rtol=2e-2)
        torch.testing.assert_close(y_pre, y_pre_ref, atol=3e-2, rtol=2e-2)
