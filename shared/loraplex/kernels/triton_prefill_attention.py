"""Triton prefill attention over the paged KV cache (chunked prefill and prefix-cache hits).

Same signature and semantics as ``torch_ref.prefill_attention_paged``: each sequence's new
tokens attend causally to its cached prefix and to themselves.  Unlike the twin, the kernel reads
*all* keys and values from the cache (the new tokens' K/V are stored before attention runs), so
one launch covers every sequence of the step whatever its prefix length.  Shapes:

* ``q``: [T, H, D] (H % KVH == 0); ``k_cache``, ``v_cache``: [num_blocks, block_size, KVH, D];
* ``cu_seqlens``: N+1 prefix sums of new tokens; ``prefix_lens``: N tokens cached before this step;
* ``block_tables``: [N, max_blocks] int; output [T, H, D] in q's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.triton_attention import _check, _check_caches, _check_t, _upcast
from loraplex.kernels.triton_lora_kernels import _dot

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTS = (torch.int32, torch.int64)

# fmt: off


@triton.jit
def _paged_prefill_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, cu_ptr, prefix_ptr, out_ptr, scale,
                          window, GROUPS, D, M_TILES, sqt, sqh, kcb, kcs, kch, vcb, vcs, vch,
                          sbt, sot, soh,
                          CACHE_BLOCK: tl.constexpr, HAS_WINDOW: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (N * M_TILES, H).  One program: BLOCK_M new tokens of one sequence, one query head;
    an online softmax over BLOCK_N-key tiles gathered through the block table."""
    seq = tl.program_id(0) // M_TILES
    tile = tl.program_id(0) % M_TILES
    head = tl.program_id(1)
    kvh = head // GROUPS
    start = tl.load(cu_ptr + seq).to(tl.int32)
    n_new = tl.load(cu_ptr + seq + 1).to(tl.int32) - start
    if tile * BLOCK_M < n_new:
        prefix = tl.load(prefix_ptr + seq).to(tl.int32)
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < n_new
        d_mask = offs_d < D
        rows = (start + offs_m).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * sqt + head * sqh + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        q_pos = prefix + offs_m  # absolute positions of these queries
        last = tl.minimum(prefix + n_new, prefix + (tile + 1) * BLOCK_M)  # keys needed: < last
        lo = 0
        if HAS_WINDOW:  # the first query of the tile sees positions > q_pos - window
            lo = tl.maximum(prefix + tile * BLOCK_M - window + 1, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for k_start in range(lo, last, BLOCK_N):
            k_pos = k_start + tl.arange(0, BLOCK_N)
            k_in = k_pos < last
            blk = tl.load(bt_ptr + seq * sbt + k_pos // CACHE_BLOCK, mask=k_in, other=0)
            blk = blk.to(tl.int64)[:, None]
            off = (k_pos % CACHE_BLOCK)[:, None]
            kv_mask = k_in[:, None] & d_mask[None, :]
            kt = tl.load(kc_ptr + blk * kcb + off * kcs + kvh * kch + offs_d[None, :],
                         mask=kv_mask, other=0.0)
            s = _dot(q, tl.trans(kt.to(q.dtype)), UPCAST, DOT_PREC) * scale  # [BLOCK_M, BLOCK_N]
            allowed = k_in[None, :] & (k_pos[None, :] <= q_pos[:, None])
            if HAS_WINDOW:
                allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            vt = tl.load(vc_ptr + blk * vcb + off * vcs + kvh * vch + offs_d[None, :],
                         mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(q.dtype), vt.to(q.dtype), UPCAST, DOT_PREC)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + rows[:, None] * sot + head * soh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


# fmt: on


def prefill_attention_paged(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: list[int],
    prefix_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached prefix and themselves.

    q: [T, H, D]; k, v: [T, KVH, D] (this step's keys/values; only checked, the kernel reads them
    from the cache where ``store_kv`` put them); k_cache, v_cache: [num_blocks, block_size, KVH, D];
    cu_seqlens: N+1 ints; prefix_lens: N ints; block_tables: [N, max_blocks] int; returns
    [T, H, D] in q's dtype.
    """
    _check_t("q", q, 3, _FLOATS)
    _check_t("k", k, 3, _FLOATS)
    _check_caches(k_cache, v_cache)
    _check_t("block_tables", block_tables, 2, _INTS)
    t, heads, d = q.shape
    _, block_size, kvh, dc = k_cache.shape
    n = len(cu_seqlens) - 1
    _check(dc == d, f"cache head dim {dc} != q head dim {d}")
    _check(kvh > 0 and heads % kvh == 0, f"H={heads} must be a multiple of KVH={kvh}")
    _check(k.shape[0] == t and k.shape[1] == kvh, f"k must be [T, KVH, D], got {tuple(k.shape)}")
    _check(len(prefix_lens) == n and n >= 0, f"need {n} prefix lengths, got {len(prefix_lens)}")
    _check(cu_seqlens[0] == 0 and cu_seqlens[-1] == t, "cu_seqlens must run from 0 to T")
    _check(block_tables.shape[0] == n, f"block_tables needs {n} rows")
    _check(sliding_window is None or int(sliding_window) > 0, "sliding_window must be None or > 0")
    tensors = (q, k_cache, v_cache, block_tables)
    _check(len({x.device for x in tensors}) == 1, "device mismatch")
    out = torch.empty_like(q)
    if t == 0 or heads == 0:
        return out
    lens = [e - s for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)]
    _check(min(lens) >= 0, "cu_seqlens must not decrease")
    block_m = 16 if max(lens) <= 16 else 32
    m_tiles = triton.cdiv(max(lens), block_m)
    meta = torch.tensor([*cu_seqlens, *prefix_lens], dtype=torch.int32).to(q.device)
    _paged_prefill_kernel[(n * m_tiles, heads)](
        q, k_cache, v_cache, block_tables, meta, meta[n + 1 :], out, float(scale),
        int(sliding_window or 0), heads // kvh, d, m_tiles, q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        CACHE_BLOCK=block_size, HAS_WINDOW=sliding_window is not None,
        BLOCK_M=block_m, BLOCK_N=32, BLOCK_D=max(16, triton.next_power_of_2(d)),
        UPCAST=_upcast(q.dtype), DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out
