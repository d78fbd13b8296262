"""Triton paged-KV kernels (store_kv, paged_decode_attention) against their torch twins.

Runs under the Triton interpreter on CPU (conftest.py); GPU-marked tests use real model shapes.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
import torch

pytest.importorskip("triton")

from loraplex.kernels import torch_ref as ref  # noqa: E402
from loraplex.kernels import triton_attention as tri  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}
DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _paged_batch(
    ctx_lens: list[int], block_size: int, kvh: int, d: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches, a shuffled block table (spare entries hold valid ids) and context lengths.

    Cache slots past each sequence's context are NaN: the kernel must never read them.
    """
    gen = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // block_size) for n in ctx_lens) + 1
    num_blocks = len(ctx_lens) * max_blocks + 3
    k_cache = torch.full((num_blocks, block_size, kvh, d), float("nan"))
    v_cache = k_cache.clone()
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[: len(ctx_lens) * max_blocks].view(len(ctx_lens), max_blocks).clone()
    for row, n in enumerate(ctx_lens):
        flat = tables[row].repeat_interleave(block_size) * block_size + torch.arange(
            max_blocks * block_size
        ).remainder(block_size)
        slots = flat[:n]
        k_cache.view(-1, kvh, d)[slots] = torch.randn(n, kvh, d, generator=gen)
        v_cache.view(-1, kvh, d)[slots] = torch.randn(n, kvh, d, generator=gen)
        tables[row, -(-n // block_size) :] = perm[-1]  # spare entries: any valid block id
    return (
        k_cache.to(DEV, dtype),
        v_cache.to(DEV, dtype),
        tables.to(DEV, torch.int32),
        torch.tensor(ctx_lens, device=DEV),
    )


DECODE_CASES = [
    (dname, groups, window, (4, 16)[i % 2])
    for i, (dname, groups, window) in enumerate(
        itertools.product(DTYPES, (1, 4, 8), (None, 3, 20, 1000))
    )
]


@pytest.mark.parametrize(("dname", "groups", "window", "block_size"), DECODE_CASES)
def test_paged_decode_matches_twin(
    dname: str, groups: int, window: int | None, block_size: int
) -> None:
    dtype, kvh, d = DTYPES[dname], 2, (32 if groups < 8 else 48)
    seed = groups * 31 + (window or 0) + block_size + len(dname)
    rng = random.Random(seed)
    ctx = [1, block_size, rng.randint(2, 70), 70]
    k_cache, v_cache, tables, ctx_t = _paged_batch(ctx, block_size, kvh, d, dtype, seed)
    q = torch.randn(len(ctx), kvh * groups, d, generator=torch.Generator().manual_seed(seed))
    q = q.to(DEV, dtype)
    scale = d**-0.5
    out = tri.paged_decode_attention(q, k_cache, v_cache, tables, ctx_t, scale, window)
    # The twin gathers whole blocks, NaN tails included, so it runs on a zero-filled copy.
    expect = ref.paged_decode_attention(
        q, k_cache.nan_to_num(0), v_cache.nan_to_num(0), tables, ctx_t, scale, window
    )
    assert out.dtype == q.dtype and out.shape == q.shape
    assert bool(out.isfinite().all())
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, expect, atol=atol, rtol=rtol)


def test_empty_context_rows_give_zeros() -> None:
    """CUDA-graph padding rows have context length 0: kernel and twin both return zeros there
    and leave the real rows as they would be alone."""
    block_size, kvh, d = 4, 2, 32
    k_cache, v_cache, tables, ctx_t = _paged_batch(
        [0, 9, 0, 5], block_size, kvh, d, torch.float32, 3
    )
    k_cache, v_cache = k_cache.nan_to_num(0), v_cache.nan_to_num(0)
    q = torch.randn(4, 2 * kvh, d, generator=torch.Generator().manual_seed(4)).to(DEV)
    out = tri.paged_decode_attention(q, k_cache, v_cache, tables, ctx_t, d**-0.5)
    expect = ref.paged_decode_attention(q, k_cache, v_cache, tables, ctx_t, d**-0.5)
    assert bool(out[[0, 2]].eq(0).all()) and bool(expect[[0, 2]].eq(0).all())
    alone = ref.paged_decode_attention(
        q[[1, 3]], k_cache, v_cache, tables[[1, 3]], ctx_t[[1, 3]], d**-0.5
    )
    assert alone.abs().sum() > 0
    torch.testing.assert_close(out[[1, 3]], alone, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(expect[[1, 3]], alone, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cache_dtype", list(DTYPES))
@pytest.mark.parametrize("dname", list(DTYPES))
def test_store_kv_matches_twin(dname: str, cache_dtype: str) -> None:
    gen = torch.Generator().manual_seed(len(dname) * 7 + len(cache_dtype))
    t, kvh, d, block_size = 9, 2, 48, 4  # D not a power of two: masked lanes
    qkv = torch.randn(t, 3 * kvh * d, generator=gen).to(DEV, DTYPES[dname])
    k = qkv[:, kvh * d : 2 * kvh * d].view(t, kvh, d)  # row-strided view, as from a fused qkv
    v = qkv[:, 2 * kvh * d :].view(t, kvh, d)
    slots = torch.randperm(6 * block_size, generator=gen)[:t]
    slots[[2, 5]] = -1  # padding rows
    slot_mapping = slots.to(DEV)
    k_cache = torch.randn(6, block_size, kvh, d, generator=gen).to(DEV, DTYPES[cache_dtype])
    v_cache = torch.randn(6, block_size, kvh, d, generator=gen).to(DEV, DTYPES[cache_dtype])
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref.store_kv(k, v, k_ref, v_ref, slot_mapping)
    tri.store_kv(k, v, k_cache, v_cache, slot_mapping.to(torch.int32))
    if INTERPRETED and cache_dtype == "bf16" and dname != "bf16":
        # The interpreter rounds float->bf16 toward zero (GPUs round to nearest): 1 ulp slack.
        torch.testing.assert_close(k_cache, k_ref, atol=0, rtol=2**-7)
        torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=2**-7)
    else:
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_then_decode_roundtrip() -> None:
    """Fill a cache with store_kv, then decode through it; matches the twins end to end."""
    gen = torch.Generator().manual_seed(5)
    kvh, d, heads, block_size, lens = 2, 32, 8, 8, [5, 19]
    k_cache = torch.zeros(8, block_size, kvh, d, device=DEV)
    v_cache = torch.zeros_like(k_cache)
    tables = torch.tensor([[3, 0, 6], [7, 1, 2]], device=DEV)
    slots = torch.cat(
        [tables[i].repeat_interleave(block_size)[:n] * block_size
         + torch.arange(n, device=DEV) % block_size for i, n in enumerate(lens)]
    )  # fmt: skip
    k = torch.randn(sum(lens), kvh, d, generator=gen).to(DEV)
    v = torch.randn(sum(lens), kvh, d, generator=gen).to(DEV)
    tri.store_kv(k, v, k_cache, v_cache, slots)
    q = torch.randn(2, heads, d, generator=gen).to(DEV)
    ctx = torch.tensor(lens, device=DEV)
    out = tri.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.3)
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    ref.store_kv(k, v, k_ref, v_ref, slots)
    torch.testing.assert_close(out, ref.paged_decode_attention(q, k_ref, v_ref, tables, ctx, 0.3))


def _bad_calls():
    q, kc = torch.randn(2, 4, 16), torch.randn(5, 4, 2, 16)
    bt, cl = torch.zeros(2, 3, dtype=torch.int32), torch.tensor([3, 5])
    k, sm = torch.randn(3, 2, 16), torch.tensor([0, 1, -1])
    return {
        "q dtype": (lambda: tri.paged_decode_attention(q.long(), kc, kc, bt, cl, 1.0), "q must"),
        "head dim": (
            lambda: tri.paged_decode_attention(q[..., :8], kc, kc, bt, cl, 1.0),
            "head dim",
        ),
        "gqa": (
            lambda: tri.paged_decode_attention(q[:, :3], kc, kc, bt, cl, 1.0),
            "multiple of KVH",
        ),
        "tables": (lambda: tri.paged_decode_attention(q, kc, kc, bt[:1], cl, 1.0), "block_tables"),
        "float lens": (
            lambda: tri.paged_decode_attention(q, kc, kc, bt, cl.float(), 1.0),
            "context_lens must",
        ),
        "window": (lambda: tri.paged_decode_attention(q, kc, kc, bt, cl, 1.0, 0), "sliding_window"),
        "cache pair": (lambda: tri.paged_decode_attention(q, kc, kc[:2], bt, cl, 1.0), "differ"),
        "kv shape": (lambda: tri.store_kv(k, k[:, :1], kc, kc, sm), "differ"),
        "cache dims": (lambda: tri.store_kv(k[..., :8], k[..., :8], kc, kc, sm), "KVH, D"),
        "slots": (lambda: tri.store_kv(k, k, kc, kc, sm[:2]), "slot_mapping needs 3"),
        "strided": (lambda: tri.store_kv(k.transpose(1, 2), k.transpose(1, 2), kc, kc, sm), "last"),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_wrapper_validation(name: str) -> None:
    call, match = _bad_calls()[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_attention_kernels_compile_for_sm90(sm90_compile) -> None:
    """The attention kernels build for Hopper: all dtypes, MHA and GQA, with and without window."""
    sm90_compile(
        """
        A = triton_attention
        cases = [(torch.float16, 32, 32, None), (torch.float16, 32, 8, 4096),
                 (torch.float16, 28, 4, None), (torch.bfloat16, 32, 8, None),
                 (torch.float32, 32, 8, 4096)]
        for dt, heads, kvh, window in cases:
            q = torch.zeros(4, heads, 128, dtype=dt)
            kc = torch.zeros(64, 16, kvh, 128, dtype=dt)
            tables = torch.zeros(4, 16, dtype=torch.int32)
            lens = torch.ones(4, dtype=torch.int32)
            A.paged_decode_attention(q, kc, kc, tables, lens, 0.08, window)
            kv = torch.zeros(8, kvh, 128, dtype=dt)
            A.store_kv(kv, kv, kc, kc, torch.zeros(8, dtype=torch.int64))
        """
    )


# ------------------------------------------------------------------------------ GPU-only tests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dname", ["fp16", "bf16"])
@pytest.mark.parametrize(("heads", "kvh", "window"), [(32, 32, None), (32, 8, None), (32, 8, 512)])
def test_decode_real_shapes_gpu(dname: str, heads: int, kvh: int, window: int | None) -> None:
    """Llama-7B (MHA) and Llama-3-8B-like (GQA 4:1) decode shapes, contexts up to 2k tokens."""
    dtype, gen = DTYPES[dname], torch.Generator().manual_seed(heads + kvh)
    lens = [1, 16, 17, 2047, *torch.randint(1, 2048, (28,), generator=gen).tolist()]
    k_cache, v_cache, tables, ctx = _paged_batch(lens, 16, kvh, 128, dtype, seed=kvh)
    q = torch.randn(len(lens), heads, 128, generator=gen).to("cuda", dtype)
    out = tri.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 128**-0.5, window)
    expect = ref.paged_decode_attention(
        q, k_cache.nan_to_num(0), v_cache.nan_to_num(0), tables, ctx, 128**-0.5, window
    )
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, expect, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture_replay_gpu() -> None:
    """store_kv + paged decode captured once, replayed with new tokens/tables/lengths in place."""
    dtype, gen = torch.float16, torch.Generator().manual_seed(0)
    bsz, heads, kvh, d, bs, max_blocks = 8, 16, 4, 128, 16, 8
    k_cache = torch.zeros(bsz * max_blocks, bs, kvh, d, device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    q = torch.zeros(bsz, heads, d, device="cuda", dtype=dtype)
    k_new, v_new = (torch.zeros(bsz, kvh, d, device="cuda", dtype=dtype) for _ in range(2))
    slots = torch.zeros(bsz, dtype=torch.int64, device="cuda")
    tables = torch.zeros(bsz, max_blocks, dtype=torch.int32, device="cuda")
    ctx = torch.ones(bsz, dtype=torch.int32, device="cuda")
    out = torch.zeros(bsz, heads, d, device="cuda", dtype=dtype)

    def step() -> None:
        tri.store_kv(k_new, v_new, k_cache, v_cache, slots)
        out.copy_(tri.paged_decode_attention(q, k_cache, v_cache, tables, ctx, d**-0.5))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(3):
        k_cache.copy_(torch.randn(k_cache.shape, generator=gen))
        v_cache.copy_(torch.randn(v_cache.shape, generator=gen))
        tables.copy_(torch.randperm(bsz * max_blocks, generator=gen).view(bsz, max_blocks))
        lens = torch.randint(1, max_blocks * bs + 1, (bsz,), generator=gen)
        ctx.copy_(lens)
        pos = lens - 1  # the new token's position
        slots.copy_(tables.cpu()[torch.arange(bsz), pos // bs].long() * bs + pos % bs)
        for t in (q, k_new, v_new):
            t.copy_(torch.randn(t.shape, generator=gen))
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        graph.replay()
        ref.store_kv(k_new, v_new, k_ref, v_ref, slots)
        expect = ref.paged_decode_attention(q, k_ref, v_ref, tables, ctx, d**-0.5)
        torch.testing.assert_close(out, expect, atol=3e-3, rtol=3e-3)
