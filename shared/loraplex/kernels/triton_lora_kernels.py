"""Triton JIT kernels behind ``triton_lora`` (launch, validation and docs live there).

Each kernel serves up to three "slices" (projections sharing an input: q/k/v or gate/up) in one
launch: a program-id axis picks the slice, and each slice's tensors and strides arrive as separate
arguments, so no device pointer table is needed (building one takes a host->device copy, which
breaks CUDA-graph capture).  ``NUM_SLICES`` is a constexpr, so unused slice branches are pruned.

Real-rank work: rank tiles at or past a slot's rank do nothing, base rows (slot -1) and rank-0
slots do nothing, and the expand reduction loops only up to ``r``.  Bodies sit under a runtime
``if`` instead of an early ``return`` so the same code runs in the CPU interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Kernel signatures are long; they are wrapped by hand.
# fmt: off


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """``a @ b`` accumulated in fp32.  UPCAST works around the CPU interpreter, whose ``tl.dot``
    multiplies bf16 tiles as their raw uint16 bits; bf16 products are exact in fp32, so the
    upcast computes what a GPU computes."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PREC)


# True when TRITON_INTERPRET=1 was set at import: the kernels then run on CPU in the interpreter.
INTERPRETED = type(_dot).__name__ == "InterpretedFunction"
if INTERPRETED:
    from loraplex.kernels import triton_interpreter_compat

    triton_interpreter_compat.patch()


@triton.jit
def _slot_rank(ranks_ptr, slot):
    """Real rank of ``slot`` (0 for base rows, slot == -1)."""
    return tl.load(ranks_ptr + tl.maximum(slot, 0), mask=slot >= 0, other=0).to(tl.int32)


# ------------------------------------------------------------------------------------------------
# SGMV (prefill): rows grouped into segments that share one slot; tl.dot tiles.
# ------------------------------------------------------------------------------------------------


@triton.jit
def _sgmv_shrink_slice(x_ptr, stride_xm, H_IN, row0, row_end, slot, rt,
                       a_ptr, rk_ptr, v_ptr, sas, sar, svm,
                       BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if (row0 < row_end) & (rt * BLOCK_R < r):
        offs_m = row0 + tl.arange(0, BLOCK_M)
        offs_r = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < row_end
        r_mask = offs_r < r
        x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
        a_ptrs = a_ptr + slot.to(tl.int64) * sas + offs_r[None, :] * sar + offs_k[:, None]
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k in range(0, H_IN, BLOCK_K):
            k_mask = (offs_k + k) < H_IN
            xt = tl.load(x_ptrs + k, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            at = tl.load(a_ptrs + k, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
            acc += _dot(xt, at, UPCAST, DOT_PREC)
        v_ptrs = v_ptr + offs_m[:, None].to(tl.int64) * svm + offs_r[None, :]
        tl.store(v_ptrs, acc.to(v_ptr.dtype.element_ty), mask=m_mask[:, None] & r_mask[None, :])


@triton.jit
def sgmv_shrink_kernel(x_ptr, seg_starts_ptr, seg_slots_ptr, stride_xm, H_IN, M_TILES, R_TILES,
                       a0, rk0, v0, sas0, sar0, svm0,
                       a1, rk1, v1, sas1, sar1, svm1,
                       a2, rk2, v2, sas2, sar2, svm2,
                       NUM_SLICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (G * M_TILES, NUM_SLICES * R_TILES)."""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    g = pid0 // M_TILES
    sid = pid1 // R_TILES
    rt = pid1 % R_TILES
    row0 = tl.load(seg_starts_ptr + g).to(tl.int32) + (pid0 % M_TILES) * BLOCK_M
    row_end = tl.load(seg_starts_ptr + g + 1).to(tl.int32)
    slot = tl.load(seg_slots_ptr + g).to(tl.int32)
    if sid == 0:
        _sgmv_shrink_slice(x_ptr, stride_xm, H_IN, row0, row_end, slot, rt, a0, rk0, v0,
                           sas0, sar0, svm0, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _sgmv_shrink_slice(x_ptr, stride_xm, H_IN, row0, row_end, slot, rt, a1, rk1, v1,
                               sas1, sar1, svm1, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _sgmv_shrink_slice(x_ptr, stride_xm, H_IN, row0, row_end, slot, rt, a2, rk2, v2,
                               sas2, sar2, svm2, BLOCK_M, BLOCK_R, BLOCK_K, UPCAST, DOT_PREC)


@triton.jit
def _sgmv_expand_slice(y_ptr, stride_ym, row0, row_end, slot, nt,
                       v_ptr, b_ptr, rk_ptr, svm, sbs, sbn, H_OUT, y_off,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if (row0 < row_end) & (r > 0) & (nt * BLOCK_N < H_OUT):
        offs_m = row0 + tl.arange(0, BLOCK_M)
        offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_mask = offs_m < row_end
        n_mask = offs_n < H_OUT
        v_ptrs = v_ptr + offs_m[:, None].to(tl.int64) * svm + offs_k[None, :]
        b_ptrs = (b_ptr + slot.to(tl.int64) * sbs + offs_n[None, :].to(tl.int64) * sbn
                  + offs_k[:, None])
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, r, BLOCK_K):  # real rank: the reduction stops at r
            k_mask = (offs_k + k) < r
            vt = tl.load(v_ptrs + k, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            bt = tl.load(b_ptrs + k, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            # v is rounded to B's dtype first, as in the torch twin.
            acc += _dot(vt.to(b_ptr.dtype.element_ty), bt, UPCAST, DOT_PREC)
        y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + y_off + offs_n[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
        y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptrs, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sgmv_expand_kernel(y_ptr, seg_starts_ptr, seg_slots_ptr, stride_ym, M_TILES, N_TILES,
                       v0, b0, rk0, svm0, sbs0, sbn0, hout0, off0,
                       v1, b1, rk1, svm1, sbs1, sbn1, hout1, off1,
                       v2, b2, rk2, svm2, sbs2, sbn2, hout2, off2,
                       NUM_SLICES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """Grid: (G * M_TILES, NUM_SLICES * N_TILES)."""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    g = pid0 // M_TILES
    sid = pid1 // N_TILES
    nt = pid1 % N_TILES
    row0 = tl.load(seg_starts_ptr + g).to(tl.int32) + (pid0 % M_TILES) * BLOCK_M
    row_end = tl.load(seg_starts_ptr + g + 1).to(tl.int32)
    slot = tl.load(seg_slots_ptr + g).to(tl.int32)
    if sid == 0:
        _sgmv_expand_slice(y_ptr, stride_ym, row0, row_end, slot, nt, v0, b0, rk0, svm0, sbs0,
                           sbn0, hout0, off0, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, DOT_PREC)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _sgmv_expand_slice(y_ptr, stride_ym, row0, row_end, slot, nt, v1, b1, rk1, svm1,
                               sbs1, sbn1, hout1, off1, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST,
                               DOT_PREC)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _sgmv_expand_slice(y_ptr, stride_ym, row0, row_end, slot, nt, v2, b2, rk2, svm2,
                               sbs2, sbn2, hout2, off2, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST,
                               DOT_PREC)


# ------------------------------------------------------------------------------------------------
# BGMV (decode): one row per program, unsorted slots; GEMV as broadcast-multiply + reduce.
# ------------------------------------------------------------------------------------------------


@triton.jit
def _bgmv_shrink_slice(x_row_ptr, row, H_IN, slot, rt, a_ptr, rk_ptr, v_ptr, sas, sar, svm,
                       BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if rt * BLOCK_R < r:
        offs_r = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_k = tl.arange(0, BLOCK_K)
        r_mask = offs_r < r
        a_ptrs = a_ptr + slot.to(tl.int64) * sas + offs_r[:, None] * sar + offs_k[None, :]
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for k in range(0, H_IN, BLOCK_K):
            k_mask = (offs_k + k) < H_IN
            xv = tl.load(x_row_ptr + k + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            at = tl.load(a_ptrs + k, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
            acc += tl.sum(at.to(tl.float32) * xv[None, :], axis=1)
        v_ptrs = v_ptr + row.to(tl.int64) * svm + offs_r
        tl.store(v_ptrs, acc.to(v_ptr.dtype.element_ty), mask=r_mask)


@triton.jit
def bgmv_shrink_kernel(x_ptr, idx_ptr, stride_xm, H_IN, R_TILES,
                       a0, rk0, v0, sas0, sar0, svm0,
                       a1, rk1, v1, sas1, sar1, svm1,
                       a2, rk2, v2, sas2, sar2, svm2,
                       NUM_SLICES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid: (T, NUM_SLICES * R_TILES)."""
    row = tl.program_id(0)
    pid1 = tl.program_id(1)
    sid = pid1 // R_TILES
    rt = pid1 % R_TILES
    slot = tl.load(idx_ptr + row).to(tl.int32)
    xr = x_ptr + row.to(tl.int64) * stride_xm
    if sid == 0:
        _bgmv_shrink_slice(xr, row, H_IN, slot, rt, a0, rk0, v0, sas0, sar0, svm0,
                           BLOCK_R, BLOCK_K)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _bgmv_shrink_slice(xr, row, H_IN, slot, rt, a1, rk1, v1, sas1, sar1, svm1,
                               BLOCK_R, BLOCK_K)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _bgmv_shrink_slice(xr, row, H_IN, slot, rt, a2, rk2, v2, sas2, sar2, svm2,
                               BLOCK_R, BLOCK_K)


@triton.jit
def _bgmv_expand_slice(y_row_ptr, row, slot, nt, v_ptr, b_ptr, rk_ptr, svm, sbs, sbn, H_OUT,
                       y_off, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    r = _slot_rank(rk_ptr, slot)
    if (r > 0) & (nt * BLOCK_N < H_OUT):
        offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        n_mask = offs_n < H_OUT
        v_row = v_ptr + row.to(tl.int64) * svm
        b_ptrs = (b_ptr + slot.to(tl.int64) * sbs + offs_n[:, None].to(tl.int64) * sbn
                  + offs_k[None, :])
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(0, r, BLOCK_K):  # real rank: the reduction stops at r
            k_mask = (offs_k + k) < r
            # v is rounded to B's dtype first, as in the torch twin.
            vv = tl.load(v_row + k + offs_k, mask=k_mask, other=0.0).to(b_ptr.dtype.element_ty)
            bt = tl.load(b_ptrs + k, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc += tl.sum(bt.to(tl.float32) * vv.to(tl.float32)[None, :], axis=1)
        y_ptrs = y_row_ptr + y_off + offs_n
        y = tl.load(y_ptrs, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptrs, (y + acc).to(y_row_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def bgmv_expand_kernel(y_ptr, idx_ptr, stride_ym, N_TILES,
                       v0, b0, rk0, svm0, sbs0, sbn0, hout0, off0,
                       v1, b1, rk1, svm1, sbs1, sbn1, hout1, off1,
                       v2, b2, rk2, svm2, sbs2, sbn2, hout2, off2,
                       NUM_SLICES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid: (T, NUM_SLICES * N_TILES)."""
    row = tl.program_id(0)
    pid1 = tl.program_id(1)
    sid = pid1 // N_TILES
    nt = pid1 % N_TILES
    slot = tl.load(idx_ptr + row).to(tl.int32)
    yr = y_ptr + row.to(tl.int64) * stride_ym
    if sid == 0:
        _bgmv_expand_slice(yr, row, slot, nt, v0, b0, rk0, svm0, sbs0, sbn0, hout0, off0,
                           BLOCK_N, BLOCK_K)
    if NUM_SLICES > 1:  # noqa: SIM102 (constexpr guard, resolved at compile time)
        if sid == 1:
            _bgmv_expand_slice(yr, row, slot, nt, v1, b1, rk1, svm1, sbs1, sbn1, hout1, off1,
                               BLOCK_N, BLOCK_K)
    if NUM_SLICES > 2:  # noqa: SIM102
        if sid == 2:
            _bgmv_expand_slice(yr, row, slot, nt, v2, b2, rk2, svm2, sbs2, sbn2, hout2, off2,
                               BLOCK_N, BLOCK_K)


# fmt: on
