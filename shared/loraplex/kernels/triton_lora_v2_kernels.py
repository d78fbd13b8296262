"""Triton JIT kernels behind ``triton_lora_v2`` (launch, plans and docs live there).

One pair of kernels serves prefill (SGMV) and decode (BGMV): rows arrive grouped by adapter.  A
group is positions ``gstart[g] .. gstart[g+1]`` with slot ``gslot[g]``; a position is a row of x
and y directly (SGMV: segments are contiguous rows) or through ``order`` (BGMV: the decode rows
sorted by slot on the device, ``HAS_ORDER``).  So every adapter's A and B are read by the
programs of its group only, once per step, however many rows use it.

* No grid axis depends on a rank: a program walks its slot's rank in ``BLOCK_R`` tiles up to the
  real rank ``r`` read on the device, so a rank-8 adapter costs one tile whatever the storage rank,
  and adapters loaded after a CUDA graph was captured are served at their own rank.
* The shrink splits the reduction over H_in into ``SPLIT_K`` chunks, one program each, and writes
  fp32 partial sums ``out[split, row, :r]``; the expand adds the partials up as it loads them
  (no atomics, no zero-fill, deterministic).  With ``SPLIT_K == 1`` ``out`` is the caller's ``v``.
* A program loops over its group's row tiles with stride ``M_TILES * BLOCK_M``: decode launches
  one row-tile program per group (``M_TILES == 1``), so a popular adapter's weights are still read
  by one program; prefill launches ``M_TILES`` programs per segment for parallelism.

Base rows (slot -1), rank-0 slots and empty groups do nothing.  Bodies sit under runtime ``if``s,
not early returns, so the same code runs in the CPU interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from loraplex.kernels.triton_lora_kernels import _dot, _slot_rank

# Runtime counts that vary with the batch are not specialised on (== 1, % 16), so a new batch
# shape does not compile a new kernel while serving.
_DYNAMIC = ["M_TILES", "N_TILES"]

# Kernel signatures are long; they are wrapped by hand.
# fmt: off


@triton.jit
def _rows(order_ptr, offs_p, m_mask, HAS_ORDER: tl.constexpr):
    """Rows of x / y at positions ``offs_p`` (int64)."""
    if HAS_ORDER:
        rows = tl.load(order_ptr + offs_p, mask=m_mask, other=0).to(tl.int64)
    else:
        rows = offs_p.to(tl.int64)
    return rows


@triton.jit
def _group(gstart_ptr, gslot_ptr, g, mt, BLOCK_M: tl.constexpr):
    """(first position of this program's first row tile, end of the group, slot)."""
    p_end = tl.load(gstart_ptr + g + 1).to(tl.int32)
    p_lo = tl.load(gstart_ptr + g).to(tl.int32) + mt * BLOCK_M
    slot = tl.load(gslot_ptr + g).to(tl.int32)
    return p_lo, p_end, slot


@triton.jit
def _shrink_slice(x_ptr, order_ptr, stride_xm, H_IN, K_PER_SPLIT, p_lo, p_end, p_step, slot, ks,
                  a_ptr, rk_ptr, o_ptr, sas, sar, sos, som,
                  HAS_ORDER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if r > 0:
        k_lo = ks * K_PER_SPLIT
        k_hi = tl.minimum(k_lo + K_PER_SPLIT, H_IN)
        offs_k = tl.arange(0, BLOCK_K)
        a_base = a_ptr + slot.to(tl.int64) * sas
        o_base = o_ptr + ks.to(tl.int64) * sos
        for m0 in range(p_lo, p_end, p_step):
            offs_p = m0 + tl.arange(0, BLOCK_M)
            m_mask = offs_p < p_end
            rows = _rows(order_ptr, offs_p, m_mask, HAS_ORDER)
            x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]
            for r0 in range(0, r, BLOCK_R):  # real rank: tiles past r are never visited
                offs_r = r0 + tl.arange(0, BLOCK_R)
                r_mask = offs_r < r
                a_ptrs = a_base + offs_r[None, :] * sar + offs_k[:, None]
                acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for k in range(k_lo, k_hi, BLOCK_K):
                    k_mask = (offs_k + k) < k_hi
                    xt = tl.load(x_ptrs + k, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                    at = tl.load(a_ptrs + k, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
                    acc += _dot(xt, at, UPCAST, DOT_PREC)
                # Every split stores, an empty K range included (zeros): the expand sums them all.
                o_ptrs = o_base + rows[:, None] * som + offs_r[None, :]
                tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty),
                         mask=m_mask[:, None] & r_mask[None, :])


@triton.jit(do_not_specialize=_DYNAMIC)
def grouped_shrink_kernel(x_ptr, order_ptr, gstart_ptr, gslot_ptr, stride_xm, H_IN, K_PER_SPLIT,
                          M_TILES,
                          a0, rk0, o0, sas0, sar0, sos0, som0,
                          a1, rk1, o1, sas1, sar1, sos1, som1,
                          a2, rk2, o2, sas2, sar2, sos2, som2,
                          NUM_SLICES: tl.constexpr, HAS_ORDER: tl.constexpr,
                          SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (G * M_TILES, NUM_SLICES * SPLIT_K); out[split, row, :r] = x[row, chunk] @ A[.., chunk].T"""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    sid = pid1 // SPLIT_K
    ks = pid1 % SPLIT_K
    p_lo, p_end, slot = _group(gstart_ptr, gslot_ptr, pid0 // M_TILES, pid0 % M_TILES, BLOCK_M)
    p_step = M_TILES * BLOCK_M
    if sid == 0:
        _shrink_slice(x_ptr, order_ptr, stride_xm, H_IN, K_PER_SPLIT, p_lo, p_end, p_step, slot,
                      ks, a0, rk0, o0, sas0, sar0, sos0, som0,
                      HAS_ORDER, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _shrink_slice(x_ptr, order_ptr, stride_xm, H_IN, K_PER_SPLIT, p_lo, p_end, p_step,
                          slot, ks, a1, rk1, o1, sas1, sar1, sos1, som1,
                          HAS_ORDER, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _shrink_slice(x_ptr, order_ptr, stride_xm, H_IN, K_PER_SPLIT, p_lo, p_end, p_step,
                          slot, ks, a2, rk2, o2, sas2, sar2, sos2, som2,
                          HAS_ORDER, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)


@triton.jit
def _expand_slice(y_ptr, order_ptr, stride_ym, p_lo, p_end, p_step, slot, nt,
                  v_ptr, b_ptr, rk_ptr, svs, svm, sbs, sbn, H_OUT, y_off,
                  HAS_ORDER: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, UPCAST: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if (r > 0) & (nt * BLOCK_N < H_OUT):
        offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < H_OUT
        b_base = b_ptr + slot.to(tl.int64) * sbs + offs_n[None, :].to(tl.int64) * sbn
        for m0 in range(p_lo, p_end, p_step):
            offs_p = m0 + tl.arange(0, BLOCK_M)
            m_mask = offs_p < p_end
            rows = _rows(order_ptr, offs_p, m_mask, HAS_ORDER)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for r0 in range(0, r, BLOCK_R):  # real rank: the reduction stops at r
                offs_r = r0 + tl.arange(0, BLOCK_R)
                r_mask = offs_r < r
                v_ptrs = v_ptr + rows[:, None] * svm + offs_r[None, :]
                v_mask = m_mask[:, None] & r_mask[None, :]
                vt = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for s in tl.static_range(SPLIT_K):  # the shrink's split-K partial sums
                    vt += tl.load(v_ptrs + s * svs, mask=v_mask, other=0.0).to(tl.float32)
                bt = tl.load(b_base + offs_r[:, None], mask=r_mask[:, None] & n_mask[None, :],
                             other=0.0)
                # v is rounded to B's dtype first, as in the torch twin.
                acc += _dot(vt.to(b_ptr.dtype.element_ty), bt, UPCAST, DOT_PREC)
            y_ptrs = y_ptr + rows[:, None] * stride_ym + y_off + offs_n[None, :]
            mask = m_mask[:, None] & n_mask[None, :]
            y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_ptrs, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_DYNAMIC)
def grouped_expand_kernel(y_ptr, order_ptr, gstart_ptr, gslot_ptr, stride_ym, M_TILES, N_TILES,
                          v0, b0, rk0, svs0, svm0, sbs0, sbn0, hout0, off0,
                          v1, b1, rk1, svs1, svm1, sbs1, sbn1, hout1, off1,
                          v2, b2, rk2, svs2, svm2, sbs2, sbn2, hout2, off2,
                          NUM_SLICES: tl.constexpr, HAS_ORDER: tl.constexpr,
                          SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_R: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (G * M_TILES, NUM_SLICES * N_TILES); y[row, off + n] += (sum of v partials) @ B.T"""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    sid = pid1 // N_TILES
    nt = pid1 % N_TILES
    p_lo, p_end, slot = _group(gstart_ptr, gslot_ptr, pid0 // M_TILES, pid0 % M_TILES, BLOCK_M)
    p_step = M_TILES * BLOCK_M
    if sid == 0:
        _expand_slice(y_ptr, order_ptr, stride_ym, p_lo, p_end, p_step, slot, nt,
                      v0, b0, rk0, svs0, svm0, sbs0, sbn0, hout0, off0,
                      HAS_ORDER, SPLIT_K, BLOCK_M, BLOCK_N, BLOCK_R, UPCAST, DOT_PREC)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _expand_slice(y_ptr, order_ptr, stride_ym, p_lo, p_end, p_step, slot, nt,
                          v1, b1, rk1, svs1, svm1, sbs1, sbn1, hout1, off1,
                          HAS_ORDER, SPLIT_K, BLOCK_M, BLOCK_N, BLOCK_R, UPCAST, DOT_PREC)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _expand_slice(y_ptr, order_ptr, stride_ym, p_lo, p_end, p_step, slot, nt,
                          v2, b2, rk2, svs2, svm2, sbs2, sbn2, hout2, off2,
                          HAS_ORDER, SPLIT_K, BLOCK_M, BLOCK_N, BLOCK_R, UPCAST, DOT_PREC)


# fmt: on
