"""Add the batched LoRA delta of one projection group to a base linear's output."""

from __future__ import annotations

from types import ModuleType

import torch

from loraplex.engine.forward_context import LoraMeta
from loraplex.lora.weights import LoraWeights

# Projections that share an input, with their column offsets in the fused base output.
Slices = tuple[tuple[str, int], ...]


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    layer: int,
    slices: Slices,
    weights: LoraWeights,
    meta: LoraMeta,
    ops: ModuleType,
) -> None:
    """y[:, off:off+out_t] += LoRA_t(x) for each (t, off) in ``slices``, per row's adapter.

    x: [T, H_in]; y: [T, sum(out_t)] (updated in place).  Prefill rows are grouped into adapter
    segments (SGMV); decode rows carry one slot index each (BGMV) and, sorted, segments too.
    """
    if not meta.active:
        return
    layer_a = [weights.a[t][layer] for t, _ in slices]
    layer_b = [weights.b[t][layer] for t, _ in slices]
    ranks = [weights.ranks[t][layer] for t, _ in slices]
    offsets = [off for _, off in slices]
    # fp32 intermediate: the rank-r activations are small and accumulate better in full precision.
    vs = [
        torch.empty(x.shape[0], weights.max_rank, dtype=torch.float32, device=x.device)
        for _ in slices
    ]
    # The Triton BGMV kernel handles unsorted per-row slots in one launch; on the torch path a
    # matmul per adapter segment beats per-row gathers, so decode uses the segments there too.
    if meta.is_prefill or (
        getattr(ops, "backend", "torch") == "torch" and meta.seg_starts is not None
    ):
        segs = (meta.seg_starts, meta.seg_slots)
        ops.sgmv_shrink_fused(x, layer_a, *segs, ranks, vs, max_seg_len=meta.max_seg_len)
        ops.sgmv_expand_fused(vs, layer_b, *segs, ranks, y, offsets, max_seg_len=meta.max_seg_len)
    else:
        ops.bgmv_shrink_fused(x, layer_a, meta.indices, ranks, vs)
        ops.bgmv_expand_fused(vs, layer_b, meta.indices, ranks, y, offsets)
