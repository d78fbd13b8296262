"""Pure-torch twins of every kernel: the oracle for the Triton kernels and the CPU path.

Over 300 lines on purpose: every twin in one file, so the conventions below are stated once and
a kernel's test finds its oracle beside the others.

Conventions shared with the Triton kernels in this package:

* LoRA weights of one target module at one layer are stacked over device slots and padded to
  ``max_rank`` in storage; each slot's *real* rank is given in ``ranks`` and only that many rank
  columns are read or written.  A rank of 0 means "this slot has no adapter for this module".
* ``lora_b`` already holds ``B * scaling`` (alpha / r, or alpha / sqrt(r) for rsLoRA).
* A slot index of -1 (or a segment slot of -1) marks rows served by the base model: no LoRA delta.
* Shrink writes ``v = x @ A[slot, :r].T`` into the first ``r`` columns of ``v`` (the rest of the row
  is left untouched); expand adds ``v[:, :r] @ B[slot, :, :r].T`` into a column slice of ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _rank_groups(indices: list[int], ranks: list[int]) -> dict[int, list[int]]:
    """Row numbers grouped by the rank of their slot, skipping base rows and rank-0 slots."""
    groups: dict[int, list[int]] = {}
    for row, slot in enumerate(indices):
        if slot >= 0 and ranks[slot] > 0:
            groups.setdefault(ranks[slot], []).append(row)
    return groups


def bgmv_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    indices: torch.Tensor,
    ranks: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Per-row shrink (decode): ``v[i, :r] = x[i] @ lora_a[indices[i], :r].T``.

    x: [T, H_in]; lora_a: [S, R, H_in]; indices: [T] int (slot or -1); ranks: [S] int;
    v: [T, R] (written in place, only the first r columns of rows with an adapter).
    Rows are grouped by rank so each group is one batched matmul at its real rank.
    """
    idx = indices.tolist()
    for r, rows in _rank_groups(idx, ranks.tolist()).items():
        rows_t = torch.tensor(rows, device=x.device)
        a = lora_a[indices[rows_t], :r]  # [n, r, H_in]
        v[rows_t, :r] = torch.bmm(a, x[rows_t].unsqueeze(-1)).squeeze(-1).to(v.dtype)


def bgmv_expand(
    v: torch.Tensor,
    lora_b: torch.Tensor,
    indices: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    y_offset: int = 0,
) -> None:
    """Per-row expand (decode): ``y[i, off:off+H_out] += v[i, :r] @ lora_b[indices[i], :, :r].T``.

    v: [T, R]; lora_b: [S, H_out, R]; indices: [T]; ranks: [S]; y: [T, H_total] (in place).
    """
    h_out = lora_b.shape[1]
    idx = indices.tolist()
    for r, rows in _rank_groups(idx, ranks.tolist()).items():
        rows_t = torch.tensor(rows, device=y.device)
        b = lora_b[indices[rows_t], :, :r]  # [n, H_out, r]
        delta = torch.bmm(b, v[rows_t, :r].to(b.dtype).unsqueeze(-1)).squeeze(-1)
        y[rows_t, y_offset : y_offset + h_out] += delta.to(y.dtype)


# Many short segments (a decode batch over many adapters) run as one padded batched matmul per
# rank instead of a Python loop of tiny matmuls; long segments (prefill) keep the loop.
_BATCHED_MIN_SEGMENTS = 4
_BATCHED_MAX_LEN = 16


@dataclass(frozen=True)
class _Batched:
    """Adapter segments of one rank laid out as [G, L] (padding points at an extra zero row)."""

    rank: int
    slots: torch.Tensor  # [G]
    index: torch.Tensor  # [G, L] row of x (or the padding row T)
    rows: torch.Tensor  # [n] real rows, in [G, L] order
    positions: torch.Tensor  # [n] their flat positions in [G * L]


Plan = tuple[list[tuple[int, int, int, int]], list[_Batched]]
# One model step calls the segmented ops for every layer and target with the same segment tensors:
# plan once per (segments, ranks).  Entries hold their segment tensors, so ids stay unique.
_PLANS: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, dict[tuple[int, ...], Plan]]] = {}
_PLANS_KEPT = 4


def _plan(
    seg_starts: torch.Tensor, seg_slots: torch.Tensor, ranks: torch.Tensor, num_rows: int
) -> Plan:
    """Split adapter segments into (slot, start, end, rank) to loop over and batched groups."""
    key = (id(seg_starts), id(seg_slots))
    entry = _PLANS.get(key)
    if entry is None or entry[0] is not seg_starts or entry[1] is not seg_slots:
        while len(_PLANS) >= _PLANS_KEPT:
            del _PLANS[next(iter(_PLANS))]
        entry = _PLANS[key] = (seg_starts, seg_slots, {})
    rk = tuple(ranks.tolist())
    plan = entry[2].get(rk)
    if plan is None:
        plan = entry[2][rk] = _make_plan(seg_starts, seg_slots, rk, num_rows)
    return plan


def _make_plan(
    seg_starts: torch.Tensor, seg_slots: torch.Tensor, rk: tuple[int, ...], num_rows: int
) -> Plan:
    starts, slots = seg_starts.tolist(), seg_slots.tolist()
    by_rank: dict[int, list[tuple[int, int, int]]] = {}
    for g, slot in enumerate(slots):
        if slot >= 0 and rk[slot] > 0:
            by_rank.setdefault(rk[slot], []).append((slot, starts[g], starts[g + 1]))
    loop: list[tuple[int, int, int, int]] = []
    batched: list[_Batched] = []
    device = seg_starts.device
    for r, segs in by_rank.items():
        longest = max(e - s for _, s, e in segs)
        if len(segs) < _BATCHED_MIN_SEGMENTS or longest > _BATCHED_MAX_LEN:
            loop.extend((slot, s, e, r) for slot, s, e in segs)
            continue
        index, rows, positions = [], [], []
        for g, (_, s, e) in enumerate(segs):
            index.append(list(range(s, e)) + [num_rows] * (longest - (e - s)))
            rows.extend(range(s, e))
            positions.extend(range(g * longest, g * longest + e - s))
        as_t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        batched.append(
            _Batched(
                r, as_t([slot for slot, _, _ in segs]), as_t(index), as_t(rows), as_t(positions)
            )
        )
    return loop, batched


def _padded(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` gathered as [G, L, C], with a zero row where ``index`` == len(t)."""
    return torch.cat([t, t.new_zeros(1, t.shape[1])])[index]


def sgmv_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    ranks: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Segmented shrink (prefill): rows ``seg_starts[g]:seg_starts[g+1]`` all use slot ``seg_slots[g]``.

    x: [T, H_in]; lora_a: [S, R, H_in]; seg_starts: [G+1] int (0 .. T); seg_slots: [G] int (slot or -1);
    ranks: [S]; v: [T, R] (in place, first r columns of rows in adapter segments).
    """
    loop, batched = _plan(seg_starts, seg_slots, ranks, x.shape[0])
    same = v.dtype == x.dtype
    for slot, s, e, r in loop:
        if same:
            torch.mm(x[s:e], lora_a[slot, :r].T, out=v[s:e, :r])
        else:
            v[s:e, :r] = x[s:e] @ lora_a[slot, :r].T
    for b in batched:
        a = lora_a[:, : b.rank].index_select(0, b.slots)  # [G, r, H_in]
        out = torch.bmm(_padded(x, b.index), a.transpose(1, 2))  # [G, L, r]
        v[b.rows, : b.rank] = out.reshape(-1, b.rank)[b.positions].to(v.dtype)


def sgmv_expand(
    v: torch.Tensor,
    lora_b: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    ranks: torch.Tensor,
    y: torch.Tensor,
    y_offset: int = 0,
) -> None:
    """Segmented expand (prefill): ``y[s:e, off:off+H_out] += v[s:e, :r] @ lora_b[slot, :, :r].T``.

    v: [T, R]; lora_b: [S, H_out, R]; seg_starts: [G+1]; seg_slots: [G]; ranks: [S];
    y: [T, H_total] (in place).
    """
    h_out = lora_b.shape[1]
    loop, batched = _plan(seg_starts, seg_slots, ranks, v.shape[0])
    if v.dtype != lora_b.dtype:
        v = v.to(lora_b.dtype)
    same = y.dtype == lora_b.dtype
    out_view = y[:, y_offset : y_offset + h_out]
    for slot, s, e, r in loop:
        if same:  # one fused multiply-add into the strided output view
            out_view[s:e].addmm_(v[s:e, :r], lora_b[slot, :, :r].T)
        else:
            out_view[s:e] += (v[s:e, :r] @ lora_b[slot, :, :r].T).to(y.dtype)
    for b in batched:
        w = lora_b[:, :, : b.rank].index_select(0, b.slots)  # [G, H_out, r]
        delta = torch.bmm(_padded(v[:, : b.rank], b.index), w.transpose(1, 2))  # [G, L, H_out]
        out_view.index_add_(0, b.rows, delta.reshape(-1, h_out)[b.positions].to(y.dtype))


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys/values into the paged cache.

    k, v: [T, KVH, D]; k_cache, v_cache: [num_blocks, block_size, KVH, D];
    slot_mapping: [T] int64, flat slot ``block * block_size + offset``; -1 rows are skipped (padding).
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    kvh, d = k.shape[1], k.shape[2]
    k_cache.view(-1, kvh, d)[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, kvh, d)[slots] = v[keep].to(v_cache.dtype)


def _window_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None
) -> torch.Tensor:
    """Boolean [Q, K] mask (True = attend): causal, optionally limited to the last ``sliding_window``."""
    mask = k_pos[None, :] <= q_pos[:, None]
    if sliding_window is not None:
        mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
    return mask


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one sequence: q [L, H, D], k/v [S, KVH, D] -> [L, H, D]; causal without
    ``mask``.  Runs on 4-D [1, heads, L, D] views: no fused CUDA backend of SDPA (flash,
    efficient, cuDNN) takes 3-D inputs, so those would run its slow math path."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and mask is not None and q.is_cuda:
        # A fused backend that takes the mask may not take enable_gqa: copy the KV heads instead.
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        gqa = False
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=gqa,
    )
    return o[0].transpose(0, 1)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: list[int],
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal self-attention over variable-length prompts packed in one tensor, one SDPA per
    prompt (the CPU path and the oracle of the one-launch CUDA path, ``flex_prefill``).

    q: [T, H, D]; k, v: [T, KVH, D] (grouped-query: H % KVH == 0); cu_seqlens: [N+1] prefix sums
    of the prompt lengths; returns [T, H, D].
    """
    out = torch.empty_like(q)
    for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True):
        mask = None
        if sliding_window is not None and sliding_window < e - s:
            pos = torch.arange(e - s, device=q.device)
            mask = _window_mask(pos, pos, sliding_window)
        out[s:e] = _sdpa(q[s:e], k[s:e], v[s:e], scale, mask)
    return out


def prefill_attention_paged(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: list[int],
    prefix_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached prefix and themselves
    (chunked prefill).  The new tokens' K/V must already be stored in the cache.

    q: [T, H, D]; k, v: [T, KVH, D] (this step's keys/values); k_cache, v_cache: [num_blocks,
    block_size, KVH, D]; cu_seqlens: [N+1] prefix sums of new tokens; prefix_lens: [N] tokens
    already cached before this step; block_tables: [N, max_blocks] int; returns [T, H, D].
    A sequence with no prefix attends to ``k``/``v`` directly, as ``prefill_attention`` does.
    """
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    for i, (s, e) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)):
        prefix = prefix_lens[i]
        if prefix == 0:
            out[s:e] = prefill_attention(q[s:e], k[s:e], v[s:e], [0, e - s], scale, sliding_window)
            continue
        n_ctx = prefix + e - s
        blocks = block_tables[i, : -(-n_ctx // block_size)].long()
        ks = k_cache.index_select(0, blocks).flatten(0, 1)[:n_ctx].to(q.dtype)  # [n_ctx, KVH, D]
        vs = v_cache.index_select(0, blocks).flatten(0, 1)[:n_ctx].to(q.dtype)
        k_pos = torch.arange(n_ctx, device=q.device)
        mask = _window_mask(k_pos[prefix:], k_pos, sliding_window)  # [L, n_ctx]
        out[s:e] = _sdpa(q[s:e], ks, vs, scale, mask)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One query token per sequence attending to its cached keys through a block table.

    q: [B, H, D]; k_cache, v_cache: [num_blocks, block_size, KVH, D];
    block_tables: [B, max_blocks] int (unused entries may hold any valid block id);
    context_lens: [B] int, tokens in the cache for each row including the current one (0: the
    row attends to nothing and gets zeros); returns [B, H, D].
    """
    bsz, heads, d = q.shape
    kvh = k_cache.shape[2]
    flat = block_tables.reshape(-1).long()
    k = k_cache.index_select(0, flat).view(bsz, -1, kvh, d).transpose(1, 2)  # [B, KVH, max_ctx, D]
    v = v_cache.index_select(0, flat).view(bsz, -1, kvh, d).transpose(1, 2)
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    pos = torch.arange(k.shape[2], device=q.device)
    q_pos = (context_lens - 1).to(pos.dtype)
    mask = pos[None, :] < context_lens[:, None]
    # Masked positions (padding, another request's blocks) read as zeros, as in the Triton
    # kernel: a weight of 0 on a NaN left there by a poisoned request would still give NaN.
    beyond = ~mask[:, None, :, None]
    k, v = k.masked_fill(beyond, 0.0), v.masked_fill(beyond, 0.0)
    if sliding_window is not None:
        mask &= pos[None, :] > q_pos[:, None] - sliding_window
    o = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        k,
        v,
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=heads != kvh,
    )
    # A row with an empty context (CUDA-graph padding) gets zeros, as in the Triton kernel.
    return o.squeeze(2).masked_fill((context_lens == 0)[:, None, None], 0.0)
