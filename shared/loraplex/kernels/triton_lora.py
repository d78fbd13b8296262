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

import triton
from torch import Tensor

from loraplex.kernels import triton_lora_kernels as K
from loraplex.kernels.triton_lora_common import (
    check_device,
    check_int,
    chunks,
    default_offsets,
    dot_opts,
    pad3,
    validate_expand,
    validate_shrink,
)

_RANK_TILE = 16  # small rank tiles: a rank-8 adapter never pays for rank-64 compute


def _block_m(max_len: int) -> int:
    # Row tile of one segment: tl.dot needs >= 16; bigger tiles for long prompts.
    return 16 if max_len <= 16 else 32 if max_len <= 64 else 64


def _shrink_args(lora_as, ranks_list, vs, chunk: range) -> list:
    return pad3(
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
    validate_shrink(x, lora_as, ranks_list, vs)
    check_int("seg_starts", seg_starts)
    check_int("seg_slots", seg_slots, seg_starts.shape[0] - 1)
    check_device(x, seg_starts, seg_slots)
    n_seg, t = seg_slots.shape[0], x.shape[0]
    max_len = t if max_seg_len is None else min(int(max_seg_len), t)
    if n_seg == 0 or max_len <= 0 or x.shape[1] == 0:
        return
    block_m = _block_m(max_len)
    m_tiles = triton.cdiv(max_len, block_m)
    for chunk in chunks(len(lora_as)):
        r_tiles = _rank_tiles([lora_as[i] for i in chunk], 1)
        grid = (n_seg * m_tiles, len(chunk) * r_tiles)
        K.sgmv_shrink_kernel[grid](
            x, seg_starts, seg_slots, x.stride(0), x.shape[1], m_tiles, r_tiles,
            *_shrink_args(lora_as, ranks_list, vs, chunk),
            NUM_SLICES=len(chunk), BLOCK_M=block_m, BLOCK_R=_RANK_TILE, BLOCK_K=64,
            **dot_opts(x.dtype),
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
    validate_shrink(x, lora_as, ranks_list, vs)
    check_int("indices", indices, x.shape[0])
    check_device(x, indices)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    for chunk in chunks(len(lora_as)):
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
    return pad3(
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
    offsets = default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    validate_expand(vs, lora_bs, ranks_list, y, offsets)
    check_int("seg_starts", seg_starts)
    check_int("seg_slots", seg_slots, seg_starts.shape[0] - 1)
    check_device(y, seg_starts, seg_slots)
    n_seg, t = seg_slots.shape[0], y.shape[0]
    max_len = t if max_seg_len is None else min(int(max_seg_len), t)
    if n_seg == 0 or max_len <= 0:
        return
    block_m = _block_m(max_len)
    m_tiles = triton.cdiv(max_len, block_m)
    for chunk in chunks(len(lora_bs)):
        n_tiles = triton.cdiv(max(lora_bs[i].shape[1] for i in chunk), 64)
        grid = (n_seg * m_tiles, len(chunk) * n_tiles)
        K.sgmv_expand_kernel[grid](
            y, seg_starts, seg_slots, y.stride(0), m_tiles, n_tiles,
            *_expand_args(vs, lora_bs, ranks_list, offsets, chunk),
            NUM_SLICES=len(chunk), BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=_RANK_TILE,
            **dot_opts(lora_bs[chunk[0]].dtype),
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
    offsets = default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    validate_expand(vs, lora_bs, ranks_list, y, offsets)
    check_int("indices", indices, y.shape[0])
    check_device(y, indices)
    if y.shape[0] == 0:
        return
    for chunk in chunks(len(lora_bs)):
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
