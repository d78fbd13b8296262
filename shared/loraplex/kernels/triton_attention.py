"""Triton paged-KV-cache kernels: ``store_kv`` and ``paged_decode_attention``.

Same signatures and semantics as the torch twins in ``torch_ref``.  Shapes:

* ``k``, ``v``: [T, KVH, D]; ``k_cache``, ``v_cache``: [num_blocks, block_size, KVH, D];
  ``slot_mapping``: [T] int, flat slot ``block * block_size + offset`` (-1 = skip).
* ``q``: [B, H, D] (H % KVH == 0, head h reads kv head h // (H // KVH));
  ``block_tables``: [B, max_blocks] int; ``context_lens``: [B] int (tokens in the cache,
  current one included); output [B, H, D] in q's dtype.

Launches only use shapes and Python scalars on the host, so they are CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.triton_lora_kernels import INTERPRETED, _dot

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTS = (torch.int32, torch.int64)

# Kernel signatures are long; they are wrapped by hand.
# fmt: off


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, KVH, D,
                     skt, skh, svt, svh, kcb, kcs, kch, vcb, vcs, vch,
                     CACHE_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid: (T,). One program copies one token's [KVH, D] keys and values."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:  # -1 = padding row
        blk = slot // CACHE_BLOCK
        off = slot % CACHE_BLOCK
        offs_h = tl.arange(0, BLOCK_H)[:, None]
        offs_d = tl.arange(0, BLOCK_D)[None, :]
        mask = (offs_h < KVH) & (offs_d < D)
        kk = tl.load(k_ptr + t * skt + offs_h * skh + offs_d, mask=mask)
        vv = tl.load(v_ptr + t * svt + offs_h * svh + offs_d, mask=mask)
        kc = kc_ptr + blk * kcb + off * kcs + offs_h * kch + offs_d
        vc = vc_ptr + blk * vcb + off * vcs + offs_h * vch + offs_d
        tl.store(kc, kk.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc, vv.to(vc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _paged_decode_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, scale, window,
                         GROUPS, D, sqb, sqh, kcb, kcs, kch, vcb, vcs, vch, sbt, sob, soh,
                         CACHE_BLOCK: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (B, KVH).  One program serves all query heads of one kv head (GQA: each key/value
    tile is read once per group) with an online softmax over BLOCK_N-token tiles; the tiles are
    gathered through the block table one token at a time, so any cache block size works."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    lo = 0
    if HAS_WINDOW:  # keep positions p > (ctx - 1) - window
        lo = tl.maximum(ctx - window, 0)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUPS
    d_mask = offs_d < D
    heads = kvh * GROUPS + offs_g
    q_ptrs = q_ptr + b * sqb + heads[:, None] * sqh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for start in range(lo, ctx, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        p_mask = pos < ctx
        blk = tl.load(bt_ptr + b * sbt + pos // CACHE_BLOCK, mask=p_mask, other=0)
        blk = blk.to(tl.int64)[:, None]
        off = (pos % CACHE_BLOCK)[:, None]
        kv_mask = p_mask[:, None] & d_mask[None, :]
        k_ptrs = kc_ptr + blk * kcb + off * kcs + kvh * kch + offs_d[None, :]
        kt = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(kt.to(q.dtype)), UPCAST, DOT_PREC) * scale  # [BLOCK_G, BLOCK_N]
        s = tl.where(p_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: the first tile holds position lo
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_ptrs = vc_ptr + blk * vcb + off * vcs + kvh * vch + offs_d[None, :]
        vt = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(q.dtype), vt.to(q.dtype), UPCAST, DOT_PREC)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty context -> zeros, not NaN
    o_ptrs = out_ptr + b * sob + heads[:, None] * soh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


# fmt: on


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_t(name: str, t: torch.Tensor, ndim: int, dtypes: tuple) -> None:
    _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check(t.dtype in dtypes, f"{name} must have dtype in {dtypes}, got {t.dtype}")
    _check(t.dim() == ndim, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    _check(t.numel() == 0 or t.stride(-1) == 1, f"{name} must be contiguous in its last dim")


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    _check_t("k_cache", k_cache, 4, _FLOATS)
    _check_t("v_cache", v_cache, 4, _FLOATS)
    _check(
        k_cache.shape == v_cache.shape,
        f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ",
    )


def _upcast(dtype: torch.dtype) -> bool:
    # The CPU interpreter's tl.dot is wrong for bf16 (see triton_lora_kernels._dot).
    return dtype == torch.bfloat16 and INTERPRETED


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys/values into the paged cache (in place); rows with slot -1 are skipped.

    k, v: [T, KVH, D]; k_cache, v_cache: [num_blocks, block_size, KVH, D]; slot_mapping: [T] int.
    """
    _check_t("k", k, 3, _FLOATS)
    _check_t("v", v, 3, _FLOATS)
    _check(k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    _check_caches(k_cache, v_cache)
    _check(
        tuple(k_cache.shape[2:]) == tuple(k.shape[1:]),
        f"cache [*, *, KVH, D] = {tuple(k_cache.shape[2:])} but k has {tuple(k.shape[1:])}",
    )
    _check_t("slot_mapping", slot_mapping, 1, _INTS)
    _check(slot_mapping.shape[0] == k.shape[0], f"slot_mapping needs {k.shape[0]} entries")
    _check(len({t.device for t in (k, v, k_cache, v_cache, slot_mapping)}) == 1, "device mismatch")
    t, kvh, d = k.shape
    if t == 0 or kvh == 0 or d == 0:
        return
    _store_kv_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping, kvh, d,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        CACHE_BLOCK=k_cache.shape[1], BLOCK_H=triton.next_power_of_2(kvh),
        BLOCK_D=triton.next_power_of_2(d),
    )  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One query token per sequence attending to its cached keys through a block table.

    q: [B, H, D]; k_cache, v_cache: [num_blocks, block_size, KVH, D]; block_tables: [B, max_blocks]
    int; context_lens: [B] int (>= 1; a row with 0 gets zeros); returns [B, H, D] (q's dtype).
    Softmax and accumulation in fp32; keys/values are cast to q's dtype first, like the twin.
    """
    _check_t("q", q, 3, _FLOATS)
    _check_caches(k_cache, v_cache)
    _check_t("block_tables", block_tables, 2, _INTS)
    _check_t("context_lens", context_lens, 1, _INTS)
    bsz, heads, d = q.shape
    _, block_size, kvh, dc = k_cache.shape
    _check(dc == d, f"cache head dim {dc} != q head dim {d}")
    _check(kvh > 0 and heads % kvh == 0, f"H={heads} must be a multiple of KVH={kvh}")
    _check(block_tables.shape[0] == bsz, f"block_tables needs {bsz} rows")
    _check(context_lens.shape[0] == bsz, f"context_lens needs {bsz} entries")
    _check(sliding_window is None or int(sliding_window) > 0, "sliding_window must be None or > 0")
    tensors = (q, k_cache, v_cache, block_tables, context_lens)
    _check(len({t.device for t in tensors}) == 1, "device mismatch")
    out = torch.empty_like(q)
    if bsz == 0 or heads == 0:
        return out
    groups = heads // kvh
    _paged_decode_kernel[(bsz, kvh)](
        q, k_cache, v_cache, block_tables, context_lens, out, float(scale),
        int(sliding_window or 0), groups, d, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        CACHE_BLOCK=block_size, HAS_WINDOW=sliding_window is not None,
        BLOCK_G=max(16, triton.next_power_of_2(groups)), BLOCK_N=32,
        BLOCK_D=max(16, triton.next_power_of_2(d)), UPCAST=_upcast(q.dtype),
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out
