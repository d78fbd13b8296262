"""How the v2 LoRA kernels see a batch: rows grouped by adapter.

Prefill segments are groups already (contiguous rows, one slot each).  Decode rows carry a slot
each, in any order; ``bgmv_plan`` sorts and groups them on the device with a few small torch ops
(no host sync, fixed shapes), so it can be captured in a CUDA graph and made once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from loraplex.kernels.triton_lora_common import check_device, check_int


@dataclass(frozen=True)
class GroupPlan:
    """Rows grouped by adapter: group g is positions ``starts[g] .. starts[g+1]`` with slot
    ``slots[g]``; a position is row ``order[p]`` (decode) or row p itself (prefill segments)."""

    kind: str  # "bgmv" or "sgmv"
    starts: Tensor  # [G+1] int
    slots: Tensor  # [G] int (-1 = base rows)
    order: Tensor | None  # [T] int64 rows sorted by slot; None: positions are rows
    num_groups: int  # G, a host-side bound (empty groups do nothing)
    max_rows: int  # host-side bound on the rows of one group


def bgmv_plan(indices: Tensor, num_slots: int) -> GroupPlan:
    """Group unsorted decode rows by slot on the device: stable sort, then the first position of
    each run of equal slots.  No host sync; the group count is bounded by min(T, num_slots + 1)
    (every slot plus the base), so the grid is fixed for a given batch size."""
    check_int("indices", indices)
    t = indices.shape[0]
    g = max(1, min(t, num_slots + 1))
    sorted_slots, order = torch.sort(indices, stable=True)
    new = torch.ones(t, dtype=torch.int64, device=indices.device)
    if t > 1:
        new[1:] = sorted_slots[1:] != sorted_slots[:-1]
    gid = torch.cumsum(new, 0) - 1  # group of every position
    starts = torch.full((t + 1,), t, dtype=torch.int64, device=indices.device)
    starts.scatter_reduce_(0, gid, torch.arange(t, device=indices.device), reduce="amin")
    starts = starts[: g + 1]  # starts[g] stays t: every group id is < g
    slots = sorted_slots[starts[:g].clamp(max=max(t - 1, 0))] if t else sorted_slots[:0]
    return GroupPlan("bgmv", starts, slots, order, g if t else 0, t)


def sgmv_plan(
    seg_starts: Tensor, seg_slots: Tensor, rows: int, max_seg_len: int | None
) -> GroupPlan:
    check_int("seg_starts", seg_starts)
    check_int("seg_slots", seg_slots, seg_starts.shape[0] - 1)
    check_device(seg_starts, seg_slots)
    max_len = rows if max_seg_len is None else min(int(max_seg_len), rows)
    return GroupPlan("sgmv", seg_starts, seg_slots, None, seg_slots.shape[0], max(max_len, 0))
