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
    segments (SGMV); decode rows carry one slot index each (BGMV).
    """
    if not meta.active:
        return
    for target, offset in slices:
        a, b = weights.a[target][layer], weights.b[target][layer]
        ranks = weights.ranks[target][layer]
        v = torch.empty(x.shape[0], weights.max_rank, dtype=torch.float32, device=x.device)
        if meta.is_prefill:
            ops.sgmv_shrink(x, a, meta.seg_starts, meta.seg_slots, ranks, v)
            ops.sgmv_expand(v, b, meta.seg_starts, meta.seg_slots, ranks, y, offset)
        else:
            ops.bgmv_shrink(x, a, meta.indices, ranks, v)
            ops.bgmv_expand(v, b, meta.indices, ranks, y, offset)
