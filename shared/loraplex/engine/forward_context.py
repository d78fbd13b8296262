"""Per-step metadata the model reads: attention (paged KV) and LoRA (segments or row indices).

Built only by ``loraplex.engine.batch``; the model and kernels only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMeta:
    is_prefill: bool
    slot_mapping: torch.Tensor  # [T] int64 flat cache slot of every new token (-1 = padding)
    cu_seqlens: list[int]  # prefill: [N+1] prefix sums of new tokens per sequence
    block_tables: torch.Tensor | None  # decode, and prefill with prefixes: [B, max_blocks] int32
    context_lens: torch.Tensor | None  # decode: [B] int32, tokens in cache incl. the new one
    # Prefill: tokens of each sequence already in the cache (a chunked prefill's earlier chunks);
    # None when every sequence starts from zero, so attention needs only this step's K/V.
    prefix_lens: list[int] | None = None


@dataclass(frozen=True)
class LoraMeta:
    active: bool  # False when every row is a base-model row: LoRA is skipped entirely
    is_prefill: bool
    seg_starts: torch.Tensor | None  # SGMV: [G+1] int32 row offsets of adapter segments
    seg_slots: torch.Tensor | None  # SGMV: [G] int32 slot per segment (-1 = base)
    indices: torch.Tensor | None  # decode (BGMV): [B] int32 slot per row (-1 = base)
    max_seg_len: int = 0  # prefill: longest segment (sizes the Triton grid without a host sync)


@dataclass(frozen=True)
class ForwardContext:
    attn: AttentionMeta
    lora: LoraMeta
