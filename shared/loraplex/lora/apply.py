"""Add the batched LoRA delta of one projection group to a base linear's output."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from loraplex.forward_context import LoraMeta
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
    plan: Any = None,
) -> None:
    """y[:, off:off+out_t] += LoRA_t(x) for each (t, off) in ``slices``, per row's adapter.

    x: [T, H_in]; y: [T, sum(out_t)] (updated in place).  Prefill rows are grouped into adapter
    segments (SGMV); decode rows carry one slot index each (BGMV) and, sorted, segments too.
    ``plan``: the decode rows' grouping (``ops.bgmv_plan``) when the caller made it; by default it
    is made once per ``meta``.
    """
    if not meta.active:
        return
    layer_a = [weights.a[t][layer] for t, _ in slices]
    layer_b = [weights.b[t][layer] for t, _ in slices]
    ranks = [weights.ranks[t][layer] for t, _ in slices]
    offsets = [off for _, off in slices]
    # Shrink + expand in one call (the intermediate stays fp32).  The Triton BGMV kernels take
    # unsorted per-row slots; on the torch path a matmul per adapter segment beats per-row
    # gathers, so decode uses the segments there too.
    if meta.is_prefill or (
        getattr(ops, "backend", "torch") == "torch" and meta.seg_starts is not None
    ):
        segs = (meta.seg_starts, meta.seg_slots)
        ops.sgmv_lora(x, layer_a, layer_b, *segs, ranks, y, offsets, max_seg_len=meta.max_seg_len)
    else:
        if plan is None:
            plan = decode_plan(meta, ops, weights.max_loras)
        ops.bgmv_lora(x, layer_a, layer_b, meta.indices, ranks, y, offsets, plan=plan)


# One decode step calls add_lora for every layer and projection group with the same LoraMeta:
# the kernels' grouping of its rows (v2: a device sort, no sync) is made once per step.  Keyed by
# the meta object (held, so its id is not reused) and by whether a CUDA graph is being captured:
# a capture must record the grouping ops itself, not read one computed before it.
_PLANS: dict[tuple[int, int, bool], tuple[LoraMeta, Any]] = {}
_PLANS_KEPT = 4


def decode_plan(meta: LoraMeta, ops: ModuleType, num_slots: int) -> Any:
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    key = (id(meta), id(ops), capturing)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is meta:
        return hit[1]
    while len(_PLANS) >= _PLANS_KEPT:
        del _PLANS[next(iter(_PLANS))]
    plan = ops.bgmv_plan(meta.indices, num_slots)
    _PLANS[key] = (meta, plan)
    return plan
