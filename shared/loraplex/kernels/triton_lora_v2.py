"""Triton multi-LoRA kernels, second generation: rows grouped by adapter, split-K shrink, grids
that never depend on a rank.  Selected by ``LORAPLEX_LORA_KERNEL=v2`` (v1, ``triton_lora``, stays
the default until a GPU run has measured both side by side: ``bench/kernels.py``).

Same names, shapes and semantics as ``triton_lora`` and the torch twins (real rank per slot, fused
slices, base rows free, unsorted decode indices, no host syncs, CUDA-graph capturable), plus:

* ``sgmv_lora`` / ``bgmv_lora``: shrink and expand of one projection group in one call, the
  rank-r intermediate kept in fp32 split-K partials that the expand sums (what ``add_lora`` runs);
* ``bgmv_plan`` (``lora_plan``): the decode rows sorted and grouped by slot on the device (a
  handful of small torch ops, no sync), made once per step and shared by every layer.

What differs from v1 and why (see ``triton_lora_v2_kernels`` for the kernels):

* v1 launched one BGMV program per row: an adapter used by n rows had its A and B read n times,
  and its shrink grid had a rank-tile axis sized from the storage rank (most programs exited at
  once) with each working program walking all of H_in alone.  v2 launches per adapter group, walks
  the real rank inside the program, and splits H_in across programs.
* Block sizes come from ``lora_tuning`` per shape (heuristic defaults, replaced by timed choices
  when ``lora_warmup`` tunes them at start-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import triton
from torch import Tensor

from loraplex.kernels import triton_lora_v2_kernels as K2
from loraplex.kernels.lora_plan import GroupPlan, bgmv_plan, sgmv_plan
from loraplex.kernels.lora_tuning import (
    ExpandConfig,
    LoraKernelConfig,
    ShapeKey,
    ShrinkConfig,
    bucket,
    config_for,
)
from loraplex.kernels.triton_lora_common import (
    check,
    check_device,
    check_int,
    chunks,
    default_offsets,
    dot_opts,
    pad3,
    validate_expand,
    validate_lora,
    validate_shrink,
)


def _key(plan: GroupPlan, h_in: int, h_out: int, n_slices: int, dtype: torch.dtype) -> ShapeKey:
    groups = bucket(plan.num_groups * max(1, plan.max_rows // 64)) if plan.kind == "sgmv" else 0
    return ShapeKey(plan.kind, bucket(plan.max_rows), h_in, h_out, n_slices, str(dtype), groups)


def _m_tiles(plan: GroupPlan, block_m: int) -> int:
    # Decode: one program per group walks all its rows, so each adapter is read by one program.
    return 1 if plan.kind == "bgmv" else triton.cdiv(plan.max_rows, block_m)


def _common(plan: GroupPlan) -> list:
    order = plan.order if plan.order is not None else plan.starts  # unused without HAS_ORDER
    return [order, plan.starts, plan.slots]


# ------------------------------------------------------------------------------------- launches


def _launch_shrink(
    x: Tensor, lora_as, ranks_list, outs, plan: GroupPlan, cfg: ShrinkConfig
) -> None:
    """outs[i]: [split_k, T, R_i] (any strides, last dim contiguous) or [T, R_i] when split_k is 1."""
    if plan.num_groups == 0 or plan.max_rows == 0 or x.shape[0] == 0:
        return
    h_in = x.shape[1]
    k_per_split = triton.cdiv(triton.cdiv(h_in, cfg.split_k), cfg.block_k) * cfg.block_k
    m_tiles = _m_tiles(plan, cfg.block_m)
    for chunk in chunks(len(lora_as)):
        args = []
        for i in chunk:
            a, o = lora_as[i], outs[i]
            split_stride = o.stride(0) if o.dim() == 3 else 0
            args.append((a, ranks_list[i], o, a.stride(0), a.stride(1), split_stride, o.stride(-2)))
        grid = (plan.num_groups * m_tiles, len(chunk) * cfg.split_k)
        K2.grouped_shrink_kernel[grid](
            x, *_common(plan), x.stride(0), h_in, k_per_split, m_tiles, *pad3(args),
            NUM_SLICES=len(chunk), HAS_ORDER=plan.order is not None, SPLIT_K=cfg.split_k,
            BLOCK_M=cfg.block_m, BLOCK_R=cfg.block_r, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **dot_opts(x.dtype),
        )  # fmt: skip


def _launch_expand(
    vs, lora_bs, ranks_list, y: Tensor, offsets, plan: GroupPlan, cfg: ExpandConfig, split_k: int
) -> None:
    """vs[i]: the shrink's ``outs[i]`` (``split_k`` partials summed here)."""
    if plan.num_groups == 0 or plan.max_rows == 0 or y.shape[0] == 0:
        return
    m_tiles = _m_tiles(plan, cfg.block_m)
    for chunk in chunks(len(lora_bs)):
        n_tiles = triton.cdiv(max(lora_bs[i].shape[1] for i in chunk), cfg.block_n)
        args = []
        for i in chunk:
            v, b = vs[i], lora_bs[i]
            split_stride = v.stride(0) if v.dim() == 3 else 0
            args.append((v, b, ranks_list[i], split_stride, v.stride(-2), b.stride(0),
                         b.stride(1), b.shape[1], int(offsets[i])))  # fmt: skip
        grid = (plan.num_groups * m_tiles, len(chunk) * n_tiles)
        K2.grouped_expand_kernel[grid](
            y, *_common(plan), y.stride(0), m_tiles, n_tiles, *pad3(args),
            NUM_SLICES=len(chunk), HAS_ORDER=plan.order is not None, SPLIT_K=split_k,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **dot_opts(lora_bs[chunk[0]].dtype),
        )  # fmt: skip


def new_scratch(n_slices: int, split: int, rows: int, rank: int, device: torch.device) -> Tensor:
    """The fp32 split-K partials [slice, split, T, R] (tests poison them through this seam)."""
    return torch.empty(n_slices, split, rows, rank, dtype=torch.float32, device=device)


def _lora(x, lora_as, lora_bs, ranks_list, y, y_offsets, plan, config) -> None:
    offsets = default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    validate_lora(x, lora_as, lora_bs, ranks_list, y, offsets)
    if x.shape[0] == 0 or x.shape[1] == 0 or plan.num_groups == 0:
        return
    h_out = max(b.shape[1] for b in lora_bs)
    cfg = config or config_for(_key(plan, x.shape[1], h_out, len(lora_as), x.dtype))
    split, r_max = cfg.shrink.split_k, max(a.shape[1] for a in lora_as)
    # fp32 partials [slice, split, T, R]; never zero-filled: the expand reads only what the
    # shrink wrote (rows of a group with rank r > 0, columns < r, every split).
    scratch = new_scratch(len(lora_as), split, x.shape[0], r_max, x.device)
    outs = [scratch[i] for i in range(len(lora_as))]
    _launch_shrink(x, lora_as, ranks_list, outs, plan, cfg.shrink)
    _launch_expand(outs, lora_bs, ranks_list, y, offsets, plan, cfg.expand, split)


# ----------------------------------------------------------------------------- shrink + expand


def sgmv_lora(
    x: Tensor, lora_as: Sequence[Tensor], lora_bs: Sequence[Tensor], seg_starts: Tensor,
    seg_slots: Tensor, ranks_list: Sequence[Tensor], y: Tensor,
    y_offsets: Sequence[int] | None = None, max_seg_len: int | None = None,
    config: LoraKernelConfig | None = None,
) -> None:  # fmt: skip
    """``y[s:e, off_i : off_i + H_out_i] += (x[s:e] @ A_i[slot, :r].T) @ B_i[slot, :, :r].T`` for
    every segment and slice, the intermediate in fp32 (rounded to B's dtype before the expand, as
    ``sgmv_shrink`` into an fp32 ``v`` then ``sgmv_expand`` do).

    x: [T, H_in]; lora_as[i]: [S, R_i, H_in]; lora_bs[i]: [S, H_out_i, R_i]; seg_starts: [G+1];
    seg_slots: [G]; ranks_list[i]: [S]; y: [T, H_total]; y_offsets: default back to back from 0;
    max_seg_len: a Python int >= the longest segment (default T); config: fixed block sizes.
    """
    plan = sgmv_plan(seg_starts, seg_slots, x.shape[0], max_seg_len)
    check_device(x, seg_starts)
    _lora(x, lora_as, lora_bs, ranks_list, y, y_offsets, plan, config)


def bgmv_lora(
    x: Tensor, lora_as: Sequence[Tensor], lora_bs: Sequence[Tensor], indices: Tensor,
    ranks_list: Sequence[Tensor], y: Tensor, y_offsets: Sequence[int] | None = None,
    plan: GroupPlan | None = None, config: LoraKernelConfig | None = None,
) -> None:  # fmt: skip
    """``sgmv_lora`` for decode rows with one slot each, in any order (``indices``: [T], -1 =
    base).  ``plan``: ``bgmv_plan(indices, S)`` when the caller reuses one across calls."""
    check_int("indices", indices, x.shape[0])
    check_device(x, indices)
    if plan is None:
        plan = bgmv_plan(indices, lora_as[0].shape[0])
    check(plan.kind == "bgmv" and plan.max_rows == x.shape[0], "plan is not for these rows")
    _lora(x, lora_as, lora_bs, ranks_list, y, y_offsets, plan, config)


# ------------------------------------------------------ shrink and expand apart (v1's interface)


def _shrink(x, lora_as, ranks_list, vs, plan, config) -> None:
    validate_shrink(x, lora_as, ranks_list, vs)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    cfg = config or config_for(_key(plan, x.shape[1], 0, len(lora_as), x.dtype))
    # Written straight into the caller's v: one split (partials would need a v per split).
    _launch_shrink(x, lora_as, ranks_list, list(vs), plan, replace(cfg.shrink, split_k=1))


def _expand(vs, lora_bs, ranks_list, y, y_offsets, plan, config) -> None:
    offsets = default_offsets(lora_bs) if y_offsets is None else list(y_offsets)
    validate_expand(vs, lora_bs, ranks_list, y, offsets)
    h_out = max(b.shape[1] for b in lora_bs)
    key = _key(plan, 0, h_out, len(lora_bs), lora_bs[0].dtype)
    cfg = config or config_for(key)
    _launch_expand(vs, lora_bs, ranks_list, y, offsets, plan, cfg.expand, 1)


def sgmv_shrink_fused(x, lora_as, seg_starts, seg_slots, ranks_list, vs, max_seg_len=None,
                      config=None) -> None:  # fmt: skip
    """See ``triton_lora.sgmv_shrink_fused``."""
    plan = sgmv_plan(seg_starts, seg_slots, x.shape[0], max_seg_len)
    check_device(x, seg_starts)
    _shrink(x, lora_as, ranks_list, vs, plan, config)


def bgmv_shrink_fused(x, lora_as, indices, ranks_list, vs, plan=None, config=None) -> None:
    """See ``triton_lora.bgmv_shrink_fused``."""
    check_int("indices", indices, x.shape[0])
    check_device(x, indices)
    _shrink(x, lora_as, ranks_list, vs, plan or bgmv_plan(indices, lora_as[0].shape[0]), config)


def sgmv_expand_fused(vs, lora_bs, seg_starts, seg_slots, ranks_list, y, y_offsets=None,
                      max_seg_len=None, config=None) -> None:  # fmt: skip
    """See ``triton_lora.sgmv_expand_fused``."""
    plan = sgmv_plan(seg_starts, seg_slots, y.shape[0], max_seg_len)
    check_device(y, seg_starts)
    _expand(vs, lora_bs, ranks_list, y, y_offsets, plan, config)


def bgmv_expand_fused(vs, lora_bs, indices, ranks_list, y, y_offsets=None, plan=None,
                      config=None) -> None:  # fmt: skip
    """See ``triton_lora.bgmv_expand_fused``."""
    check_int("indices", indices, y.shape[0])
    check_device(y, indices)
    plan = plan or bgmv_plan(indices, lora_bs[0].shape[0])
    _expand(vs, lora_bs, ranks_list, y, y_offsets, plan, config)


def sgmv_shrink(x, lora_a, seg_starts, seg_slots, ranks, v, max_seg_len=None) -> None:
    sgmv_shrink_fused(x, [lora_a], seg_starts, seg_slots, [ranks], [v], max_seg_len)


def bgmv_shrink(x, lora_a, indices, ranks, v) -> None:
    bgmv_shrink_fused(x, [lora_a], indices, [ranks], [v])


def sgmv_expand(v, lora_b, seg_starts, seg_slots, ranks, y, y_offset=0, max_seg_len=None) -> None:
    sgmv_expand_fused([v], [lora_b], seg_starts, seg_slots, [ranks], y, [y_offset], max_seg_len)


def bgmv_expand(v, lora_b, indices, ranks, y, y_offset=0) -> None:
    bgmv_expand_fused([v], [lora_b], indices, [ranks], y, [y_offset])


# ------------------------------------------------------------------------------------ tuning


def tuning_runners(
    x: Tensor, lora_as: Sequence[Tensor], lora_bs: Sequence[Tensor], ranks_list: Sequence[Tensor],
    y: Tensor, plan: GroupPlan,
):  # fmt: skip
    """(shape key, run_shrink(cfg), run_expand(cfg, shrink_cfg)) over these buffers, for
    ``lora_tuning.tune``: each kernel timed alone, the expand reading the partials the chosen
    shrink wrote.  ``y`` accumulates; use a scratch copy."""
    offsets = default_offsets(lora_bs)
    validate_lora(x, lora_as, lora_bs, ranks_list, y, offsets)
    key = _key(plan, x.shape[1], max(b.shape[1] for b in lora_bs), len(lora_as), x.dtype)
    r_max, scratches = max(a.shape[1] for a in lora_as), {}

    def outs(split: int) -> list[Tensor]:
        if split not in scratches:
            scratches[split] = new_scratch(len(lora_as), split, x.shape[0], r_max, x.device)
        return [scratches[split][i] for i in range(len(lora_as))]

    def run_shrink(cfg: ShrinkConfig) -> None:
        _launch_shrink(x, lora_as, ranks_list, outs(cfg.split_k), plan, cfg)

    def run_expand(cfg: ExpandConfig, shrink: ShrinkConfig) -> None:
        vs = outs(shrink.split_k)
        _launch_expand(vs, lora_bs, ranks_list, y, offsets, plan, cfg, shrink.split_k)

    return key, run_shrink, run_expand
