"""The one place where a list of sequences becomes tensors for a model step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.engine.forward_context import AttentionMeta, ForwardContext, LoraMeta
from loraplex.engine.sequence import Sequence


@dataclass(frozen=True)
class ModelInput:
    seqs: list[Sequence]  # row order of the logits (prefill sorts rows into adapter segments)
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    logits_index: torch.Tensor  # [N] row of each sequence's last token in T
    ctx: ForwardContext


def _slot_map(seq: Sequence, start: int, end: int, block_size: int) -> list[int]:
    table = seq.block_table
    return [table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def build_prefill(seqs: list[Sequence], block_size: int, device: torch.device) -> ModelInput:
    """Pack every sequence's uncached tokens; rows with the same adapter slot become one segment."""
    seqs = sorted(seqs, key=lambda s: s.lora_slot)  # stable: arrival order within a segment
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    cu = [0]
    seg_starts, seg_slots = [0], []
    for seq in seqs:
        tokens = seq.all_token_ids
        start = seq.num_cached
        ids.extend(tokens[start:])
        pos.extend(range(start, len(tokens)))
        slots.extend(_slot_map(seq, start, len(tokens), block_size))
        cu.append(len(ids))
        if seg_slots and seg_slots[-1] == seq.lora_slot:
            seg_starts[-1] = len(ids)
        else:
            seg_slots.append(seq.lora_slot)
            seg_starts.append(len(ids))
    as_t = lambda x, dt=torch.int32: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    attn = AttentionMeta(
        is_prefill=True,
        slot_mapping=as_t(slots, torch.int64),
        cu_seqlens=cu,
        block_tables=None,
        context_lens=None,
    )
    lora = LoraMeta(
        active=any(s >= 0 for s in seg_slots),
        is_prefill=True,
        seg_starts=as_t(seg_starts),
        seg_slots=as_t(seg_slots),
        indices=None,
        max_seg_len=max(e - s for s, e in zip(seg_starts[:-1], seg_starts[1:])),
    )
    return ModelInput(
        seqs=seqs,
        input_ids=as_t(ids, torch.int64),
        positions=as_t(pos, torch.int64),
        logits_index=as_t([c - 1 for c in cu[1:]], torch.int64),
        ctx=ForwardContext(attn, lora),
    )


def build_decode(seqs: list[Sequence], block_size: int, device: torch.device) -> ModelInput:
    """One new token per sequence; each row carries its own adapter slot (BGMV)."""
    ids = [s.last_token_id for s in seqs]
    pos = [s.num_tokens - 1 for s in seqs]
    slots = [_slot_map(s, s.num_tokens - 1, s.num_tokens, block_size)[0] for s in seqs]
    width = max(len(s.block_table) for s in seqs)
    tables = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
    as_t = lambda x, dt=torch.int32: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    lora_slots = [s.lora_slot for s in seqs]
    attn = AttentionMeta(
        is_prefill=False,
        slot_mapping=as_t(slots, torch.int64),
        cu_seqlens=[],
        block_tables=as_t(tables),
        context_lens=as_t([s.num_tokens for s in seqs]),
    )
    lora = LoraMeta(
        active=any(s >= 0 for s in lora_slots),
        is_prefill=False,
        seg_starts=None,
        seg_slots=None,
        indices=as_t(lora_slots),
    )
    return ModelInput(
        seqs=list(seqs),
        input_ids=as_t(ids, torch.int64),
        positions=as_t(pos, torch.int64),
        logits_index=torch.arange(len(seqs), device=device),
        ctx=ForwardContext(attn, lora),
    )
