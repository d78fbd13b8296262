"""Triton multi-LoRA kernels (SGMV for prefill, BGMV for decode) at each adapter's real rank.

Same signatures and semantics as the torch twins in ``torch_ref`` (see its module docstring for the
slot / rank / base-row conventions), plus ``*_fused`` variants that run several projections sharing
one input (q/k/v, gate/up) in a single launch.  Shapes:

* ``x``: [T, H_in]; ``lora_a``: [S, R, H_in]; ``v``: [T, R] (shrink writes its first r columns).
* ``lora_b``: [S, H_out, R] (pre-scaled); ``y``: [T, H_total]; expand adds into
  ``y[:, y_offset : y_offset + H_out]``.
* ``ranks``: [S] int (0 = no adapter for this module); ``indices``: [T] int (slot or -1);
  ``seg_starts``: [G+1] int (0 .. T), ``seg_slots``: [G] int (slot or -1).

Launches never read device values on the host (no ``.item()``/``.tolist()``), so they can be
captured in a CUDA graph given fixed metadata buffers.  The SGMV grid needs a bound on segment
length: pass ``max_seg_len`` (a Python int) when known, otherwise T is used, which is always safe
(excess row tiles just do nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from torch import Tensor

from loraplex.kernels import triton_lora_kernels as K

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTS = (torch.int32, torch.int64)
_MAX_SLICES_PER_LAUNCH = 3  # kernels take up to three slices as separate arguments
_RANK_TILE = 16  # small rank tiles: a rank-8 adapter never pays for rank-64 compute


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_float(name: str, t: Tensor, ndim: int) -> None:
    _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check(t.dtype in _FLOATS, f"{name} must be float32/float16/bfloat16, got {t.dtype}")
    _check(t.dim() == ndim, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    # Kernels index the innermost dim with unit stride; outer strides are passed through.
    _check(t.numel() == 0 or t.stride(-1) == 1, f"{name} must be contiguous in its last dim")


def _check_int(name: str, t: Tensor, length: int | None = None) -> None:
    _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check(t.dtype in _INTS, f"{name} must be int32/int64, got {t.dtype}")
    _check(t.dim() == 1, f"{name} must be 1-D, got shape {tuple(t.shape)}")
    _check(t.is_contiguous(), f"{name} must be contiguous")
    if length is not None:
        _check(t.shape[0] == length, f"{name} must have {length} entries, got {t.shape[0]}")


def _check_device(*tensors: Tensor) -> None:
    devs = {t.device for t in tensors}
    _check(len(devs) == 1, f"all tensors must be on one device, got {sorted(map(str, devs))}")


def _check_slices(ws: Sequence[Tensor], n_r: int, n_v: int) -> None:
    n = len(ws)
    _check(n > 0, "need at least one slice")
    _check(n == n_r == n_v, f"slice lists differ in length: {n} weights, {n_r} ranks, {n_v} outs")
    # One launch shares its dot settings across slices.
    _check(len({w.dtype for w in ws}) == 1, "all slices' LoRA weights must share one dtype")


def _dot_opts(dtype: torch.dtype) -> dict:
    # fp32 weights: exact products like the torch twin (no silent tf32).
    prec = "ieee" if dtype == torch.float32 else "tf32"
    # The CPU interpreter's tl.dot is wrong for bf16 (see triton_lora_kernels._dot).
    upcast = dtype == torch.bfloat16 and K.INTERPRETED
    return {"DOT_PREC": prec, "UPCAST": upcast}


def _validate_shrink(x, lora_as, ranks_list, vs) -> None:
    _check_slices(lora_as, len(ranks_list), len(vs))
    _check_float("x", x, 2)
    for i, (a, rk, v) in enumerate(zip(lora_as, ranks_list, vs, strict=True)):
        _check_float(f"lora_a[{i}]", a, 3)
        _check_float(f"v[{i}]", v, 2)
        _check_int(f"ranks[{i}]", rk, a.shape[0])
        _check(a.dtype == x.dtype, f"lora_a[{i}] dtype {a.dtype} != x dtype {x.dtype}")
        _check(a.shape[2] == x.shape[1], f"lora_a[{i}] H_in {a.shape[2]} != x H_in {x.shape[1]}")
        _check(
            tuple(v.shape) == (x.shape[0], a.shape[1]),
            f"v[{i}] must be [T, R] = {(x.shape[0], a.shape[1])}, got {tuple(v.shape)}",
        )
        _check_device(x, a, rk, v)


def _validate_expand(vs, lora_bs, ranks_list, y, offsets) -> None:
    _check_slices(lora_bs, len(ranks_list), len(vs))
    _check_float("y", y, 2)
    _check(len(offsets) == len(lora_bs), f"need {len(lora_bs)} y_offsets, got {len(offsets)}")
    for i, (v, b, rk, off) in enumerate(zip(vs, lora_bs, ranks_list, offsets, strict=True)):
        _check_float(f"lora_b[{i}]", b, 3)
        _check_float(f"v[{i}]", v, 2)
        _check_int(f"ranks[{i}]", rk, b.shape[0])
        _check(
            tuple(v.shape) == (y.shape[0], b.shape[2]),
            f"v[{i}] must be [T, R] = {(y.shape[0], b.shape[2])}, got {tuple(v.shape)}",
        )
        _check(
            off >= 0 and off + b.shape[1] <= y.shape[1],
            f"slice {i}: y[:, {off}:{off + b.shape[1]}] out of range for y width {y.shape[1]}",
        )
        _check_device(y, v, b, rk)


def _default_offsets(lora_bs: Sequence[Tensor]) -> list[int]:
    offs, acc = [], 0
    for b in lora_bs:
        offs.append(acc)
        acc += b.shape[1]
    return offs


def _chunks(n: int) -> list[range]:
    step = _MAX_SLICES_PER_LAUNCH
    return [range(i, min(i + step, n)) for i in range(0, n, step)]


def _pad3(args: list[tuple]) -> list:
    """Flatten per-slice argument tuples, repeating the first slice as a dummy up to three."""
    full = args + [args[0]] * (_MAX_SLICES_PER_LAUNCH - len(args))
    return [a for tup in full for a in tup]


def _block_m(max_len: int) -> int:
    # Row tile of one segment: tl.dot needs >= 16; bigger tiles for long prompts.
    return 16 if max_len <= 16 else 32 if max_len <= 64 else 64


def _shrink_args(lora_as, ranks_list, vs, chunk: range) -> list:
    return _pad3(
        [(lora_as[i], ranks_list[i], vs[i], lora_as[i].stride(0), lora_as[i].stride(1),
          vs[i].stride(0)) for i in chunk]
    )  # fmt: skip


def _rank_tiles(lora_ws: Sequence[Tensor], rank_dim: int) -> int:
    return triton.cdiv(max(w.shape[rank_dim] for w in lora_ws), _RANK_TILE)


# ---------------------------------------------------------------------------------------- shrink


def sgmv_shrink_fused(
    x: Tensor,
    lora_as: Sequence[Tensor],
    seg_starts: Tensor,
    seg_slots: Tensor,
    ranks_list: Sequence[Tensor],
    vs: Sequence[Tensor],
    max_seg_len: int | None = None,
) -> None:
    """``sgmv_shrink`` for several projections of one input: for each slice i,
    ``vs[i][s:e, :r_i] = x[s:e] @ lora_as[i][slot, :r_i].T`` with ``r_i = ranks_list[i][slot]``.

    x: [T, H_in]; lora_as[i]: [S, R_i, H_in]; seg_starts: [G+1]; seg_slots: [G];
    ranks_list[i]: [S]; vs[i]: [T, R_i]; max_seg_len: a Python int >= the longest segment
    (rows past it are skipped), default T.
    """
    _validate_shrink(x, lora_as, ranks_list, vs)
    _check_int("seg_starts", seg_starts)
    _check_int("seg_slots", seg_slots, seg_starts.shape[0] - 1)
    _check_device(x, seg_starts, seg_slots)
    n_seg, t = seg_slots.shape[0], x.shape[0]
    max_len = t if max_seg_len is None else min(int(max_seg_len), t)
    if n_seg == 0 or max_len <= 0 or x.shape[1] == 0:
        return
    block_m = _block_m(max_len)
    m_tiles = triton.cdiv(max_len, block_m)
    for chunk in _chunks(len(lora_as)):
        r_tiles = _rank_tiles([lora_as[i] for i in chunk], 1)
        grid = (n_seg * m_tiles, len(chunk) * r_tiles)
        K.sgmv_shrink_kernel[grid](
            x, seg_starts, seg_slots, x.stride(0), x.shape[1], m_tiles, r_tiles,
            *_shrink_args(lora_as, ranks_list, vs, chunk),
            NUM_SLICES=len(chunk), BLOCK_M=block_m, BLOCK_R=_RANK_TILE, BLOCK_K=64,
            **_dot_opts(x.dtype),
        )  # fmt: skip


def bgmv_shrink_fused(
    x: Tensor,
    lora_as: Sequence[Tensor],
    indices: Tensor,
    ranks_list: Sequence[Tensor],
    vs: Sequence[Tensor],
) -> None:
    """``bgmv_shrink`` for several projections of one input, one launch (up to three slices).

    x: [T, H_in]; lora_as[i]: [S, R_i, H_in]; indices: [T]; ranks_list[i]: [S]; vs[i]: [T, R_i].
    """
    _validate_shrink(x, lora_as, ranks_list, vs)
    _check_int("indices", indices, x.shape[0])
    _check_device(x, indices)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    for chunk in _chunks(len(lora_as)):
        r_tiles = _rank_tiles([lora_as[i] for i in chunk], 1)
        grid = (x.shape[0], len(chunk) * r_tiles)
        K.bgmv_shrink_kernel[grid](
            x, indices, x.stride(0), x.shape[1], r_tiles,
            *_shrink_args(lora_as, ranks_list, vs, chunk),
            NUM_SLICES=len(chunk), BLOCK_R=_RANK_TILE, BLOCK_K=128,
        )  # fmt: skip


def sgmv_shrink(
    x: Tensor, lora_a: Tensor, seg_starts: Tensor, seg_slots: Tensor, ranks: Tensor, v: Tensor,
    max_seg_len: int | None = None,
) -> None:  # fmt: skip
    """Segmented shrink (prefill), see ``torch_ref.sgmv_shrink``.

    x: [T, H_in]; lora_a: [S, R, H_in]; seg_starts: [G+1]; seg_slots: [G]; ranks: [S]; v: [T, R].
    """
    sgmv_shrink_fused(x, [lora_a], seg_starts, seg_slots, [ranks], [v], max_seg_len)


def bgmv_shrink(x: Tensor, lora_a: Tensor, indices: Tensor, ranks: Tensor, v: Tensor) -> None:
    """Per-row shrink (decode), see ``torch_ref.bgmv_shrink``.

    x: [T, H_in]; lora_a: [S, R, H_in]; indices: [T]; ranks: [S]; v: [T, R].
    """
    bgmv_shrink_fused(x, [lora_a], indices, [ranks], [v])


# ---------------------------------------------------------------------------------------- expand


def _expand_args(vs, lora_bs, ranks_list, offsets, chunk) -> list:
    return _pad3(
        [
            (vs[i], lora_bs[i], ranks_list[i], vs[i].stride(0), lora_bs[i].stride(0),
             lora_bs[i].stride(1), lora_bs[i].shape[1], int(offsets[i]))
            for i in chunk
        ]
    )  # fmt: skip


def sgmv_expand_fused(
    vs: Sequence[Tensor],
    lora_bs: Sequence[Tensor],
    seg_starts: Tensor,
    seg_slots: Tensor,
    ranks_list: Sequence[Tensor],
    y: Tensor,
    y_offsets: Sequence[int] | None = None,
    max_seg_len: int | None = None,
) -> None:
    """``sgmv_expand`` for several projections writing side by side into one output: for slice i,
    ``y[s:e, off_i : off_i + H_out_i] += vs[i][s:e, :r_i] @ lora_bs[i][slot, :, :r_i].T``.

    vs[i]: [T, R_i]; lora_bs[i]: [S, H_out_i, R_i]; seg_starts: [G+1]; seg_slots: [G];
    ranks_list[i]: [S]; y: [T, H_total]; y_offsets: column offset per slice (default: the slices
    packed back to back from column 0, e.g. q|k|v); max_seg_len: as in ``sgmv_shrink_fused``.
    """
    offsets = _default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    _validate_expand(vs, lora_bs, ranks_list, y, offsets)
    _check_int("seg_starts", seg_starts)
    _check_int("seg_slots", seg_slots, seg_starts.shape[0] - 1)
    _check_device(y, seg_starts, seg_slots)
    n_seg, t = seg_slots.shape[0], y.shape[0]
    max_len = t if max_seg_len is None else min(int(max_seg_len), t)
    if n_seg == 0 or max_len <= 0:
        return
    block_m = _block_m(max_len)
    m_tiles = triton.cdiv(max_len, block_m)
    for chunk in _chunks(len(lora_bs)):
        n_tiles = triton.cdiv(max(lora_bs[i].shape[1] for i in chunk), 64)
        grid = (n_seg * m_tiles, len(chunk) * n_tiles)
        K.sgmv_expand_kernel[grid](
            y, seg_starts, seg_slots, y.stride(0), m_tiles, n_tiles,
            *_expand_args(vs, lora_bs, ranks_list, offsets, chunk),
            NUM_SLICES=len(chunk), BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=_RANK_TILE,
            **_dot_opts(lora_bs[chunk[0]].dtype),
        )  # fmt: skip


def bgmv_expand_fused(
    vs: Sequence[Tensor],
    lora_bs: Sequence[Tensor],
    indices: Tensor,
    ranks_list: Sequence[Tensor],
    y: Tensor,
    y_offsets: Sequence[int] | None = None,
) -> None:
    """``bgmv_expand`` for several projections writing side by side into one output, one launch.

    vs[i]: [T, R_i]; lora_bs[i]: [S, H_out_i, R_i]; indices: [T]; ranks_list[i]: [S];
    y: [T, H_total]; y_offsets: column offset per slice (default: packed back to back from 0).
    """
    offsets = _default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    _validate_expand(vs, lora_bs, ranks_list, y, offsets)
    _check_int("indices", indices, y.shape[0])
    _check_device(y, indices)
    if y.shape[0] == 0:
        return
    for chunk in _chunks(len(lora_bs)):
        n_tiles = triton.cdiv(max(lora_bs[i].shape[1] for i in chunk), 128)
        grid = (y.shape[0], len(chunk) * n_tiles)
        K.bgmv_expand_kernel[grid](
            y, indices, y.stride(0), n_tiles,
            *_expand_args(vs, lora_bs, ranks_list, offsets, chunk),
            NUM_SLICES=len(chunk), BLOCK_N=128, BLOCK_K=_RANK_TILE,
        )  # fmt: skip


def sgmv_expand(
    v: Tensor, lora_b: Tensor, seg_starts: Tensor, seg_slots: Tensor, ranks: Tensor, y: Tensor,
    y_offset: int = 0, max_seg_len: int | None = None,
) -> None:  # fmt: skip
    """Segmented expand (prefill), see ``torch_ref.sgmv_expand``.

    v: [T, R]; lora_b: [S, H_out, R]; seg_starts: [G+1]; seg_slots: [G]; ranks: [S];
    y: [T, H_total] (``y[:, y_offset : y_offset + H_out]`` updated in place).
    """
    sgmv_expand_fused([v], [lora_b], seg_starts, seg_slots, [ranks], y, [y_offset], max_seg_len)


def bgmv_expand(
    v: Tensor, lora_b: Tensor, indices: Tensor, ranks: Tensor, y: Tensor, y_offset: int = 0
) -> None:
    """Per-row expand (decode), see ``torch_ref.bgmv_expand``.

    v: [T, R]; lora_b: [S, H_out, R]; indices: [T]; ranks: [S]; y: [T, H_total] (in place).
    """
    bgmv_expand_fused([v], [lora_b], indices, [ranks], y, [y_offset])
