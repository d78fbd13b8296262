"""The block mask of a packed prefill batch for FlexAttention, built on the host once per step.

Every prompt's queries attend causally (optionally within a sliding window) to its own keys
only.  Laid out as FlexAttention sees them, the keys a query row may read form one interval
``[lo, hi]`` of key rows:

* fresh prompts: keys are this step's packed K/V, so ``hi`` is the row itself and ``lo`` the
  first row of its prompt (or of its window);
* chunked or prefix-cached prompts: keys are each prompt's whole context (cached prefix, then the
  new tokens) gathered from the paged cache back to back; ``kv_start`` is where a prompt's
  context starts in that gathered layout.

``lo`` and ``hi`` never decrease from one row to the next, so the first and last rows of a
128-row query block bound every row of it.  That classifies each (query block, key block) pair
exactly enough for FlexAttention: *full* (every row may read every key: no mask evaluated),
*partial* (the mask decides per element) or skipped.  Rows and key columns are padded to a
power of two (``padded``); padded query rows read nothing (``lo > hi``) and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BLOCK = 128  # FlexAttention's default sparse block size (query and key)


def padded(n: int, block: int = BLOCK) -> int:
    """The shape bucket of ``n`` rows: the next power of two, at least one block.  Few distinct
    shapes keep ``torch.compile`` from specializing on many (the start-up warm-up runs each);
    padded query rows cost a copy, and their blocks read no key."""
    return max(block, 1 << max(n - 1, 0).bit_length())


@dataclass(frozen=True)
class RowBounds:
    """Per query row, the key rows it may read (``lo <= kv <= hi``), over ``q_pad`` rows."""

    lo: torch.Tensor  # [q_pad] int32
    hi: torch.Tensor  # [q_pad] int32
    q_len: int  # real rows; rows past it are padding (lo > hi)
    kv_len: int  # real key rows
    kv_pad: int


def row_bounds(
    cu_seqlens: Sequence[int],
    prefix_lens: Sequence[int] | None,
    sliding_window: int | None,
    block: int = BLOCK,
) -> RowBounds:
    """Key interval of every query row of a packed batch (host tensors).

    ``prefix_lens`` None: keys are this step's K/V rows.  Otherwise keys are each prompt's
    ``prefix + new`` tokens, prompts back to back in ``cu_seqlens`` order.
    """
    cu = torch.tensor(list(cu_seqlens), dtype=torch.int64)
    lens = cu[1:] - cu[:-1]
    q_len = int(cu[-1])
    doc = torch.repeat_interleave(torch.arange(len(lens)), lens)
    local = torch.arange(q_len) - cu[:-1][doc]
    if prefix_lens is None:
        pos, kv_start, kv_len = local, cu[:-1], q_len
    else:
        prefix = torch.tensor(list(prefix_lens), dtype=torch.int64)
        ctx = prefix + lens
        kv_start = torch.cumsum(ctx, 0) - ctx
        pos, kv_len = prefix[doc] + local, int(ctx.sum())
    if sliding_window is None:
        first = torch.zeros_like(pos)
    else:
        first = (pos - sliding_window + 1).clamp(min=0)
    q_pad, kv_pad = padded(q_len, block), padded(kv_len, block)
    lo = torch.full((q_pad,), kv_pad, dtype=torch.int32)  # padding rows: lo > hi, nothing read
    hi = torch.full((q_pad,), -1, dtype=torch.int32)
    lo[:q_len] = (kv_start[doc] + first).to(torch.int32)
    hi[:q_len] = (kv_start[doc] + pos).to(torch.int32)
    return RowBounds(lo, hi, q_len, kv_len, kv_pad)


def block_classes(b: RowBounds, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) boolean [q_blocks, kv_blocks]: pairs where some (partial) or every
    (full) real row of the query block may read every key of the key block."""
    q_blocks, kv_blocks = b.lo.shape[0] // block, b.kv_pad // block
    first = torch.arange(q_blocks) * block
    last = (first + block - 1).clamp(max=max(b.q_len - 1, 0))
    real = first < b.q_len
    lo_first, lo_last = b.lo[first].long(), b.lo[last].long()
    hi_first, hi_last = b.hi[first].long(), b.hi[last].long()
    j = torch.arange(kv_blocks)[None, :] * block  # first key of each key block
    real = real[:, None]
    touched = real & (j + block - 1 >= lo_first[:, None]) & (j <= hi_last[:, None])
    full = real & (j >= lo_last[:, None]) & (j + block - 1 <= hi_first[:, None])
    return touched & ~full, full


def _sparse(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q, KV] bool -> (counts [1, 1, Q], indices [1, 1, Q, KV]) int32, listed blocks first."""
    counts = dense.sum(-1, dtype=torch.int32)
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[None, None].contiguous(), order[None, None].contiguous()


def interval_mask(lo: torch.Tensor, hi: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention mask_mod: query row q may read key row kv iff lo[q] <= kv <= hi[q]."""

    def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        return (kv_idx >= lo[q_idx]) & (kv_idx <= hi[q_idx])

    return mask_mod


def block_mask(b: RowBounds, device: torch.device, block: int = BLOCK):  # type: ignore[no-untyped-def]
    """The FlexAttention ``BlockMask`` of ``b`` on ``device`` (its mask reads device copies of
    ``lo``/``hi``)."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = block_classes(b, block)
    kv_num, kv_idx = _sparse(partial)
    full_num, full_idx = _sparse(full)
    lo, hi = b.lo.to(device), b.hi.to(device)
    mask = BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=interval_mask(lo, hi),
        seq_lengths=(b.lo.shape[0], b.kv_pad),
    )
    return mask.to(device)


def effective_mask(b: RowBounds, block: int = BLOCK) -> torch.Tensor:
    """[q_len, kv_len] bool: what FlexAttention computes with the block mask of ``b`` (full
    blocks read entirely, partial ones through the mask, the rest skipped).  For tests."""
    partial, full = block_classes(b, block)
    kv = torch.arange(b.kv_pad)
    elem = (kv[None, :] >= b.lo[:, None]) & (kv[None, :] <= b.hi[:, None])
    up = lambda m: m.repeat_interleave(block, 0).repeat_interleave(block, 1)  # noqa: E731
    out = up(full) | (up(partial) & elem)
    return out[: b.q_len, : b.kv_len]
