"""Per-step metadata the model reads: attention (paged KV) and LoRA (segments or row indices).

Built only by ``loraplex.engine.batch``; the model and kernels only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMeta:
    """Rows [0, P) are prefill tokens (P = ``num_prefill_tokens``), rows [P, T) decode rows (one
    token each).  A decode-only step has P = 0; a prefill step may carry decode rows too (mixed
    steps keep running sequences decoding while long prompts are prefilled in chunks)."""

    is_prefill: bool  # the step has prefill rows (and runs LoRA over segments)
    slot_mapping: torch.Tensor  # [T] int64 flat cache slot of every new token (-1 = padding)
    cu_seqlens: list[int]  # prefill rows: [N+1] prefix sums of new tokens per sequence
    block_tables: torch.Tensor | None  # decode rows: [B, max_blocks] int32
    context_lens: torch.Tensor | None  # decode rows: [B] int32, tokens in cache incl. the new one
    # Prefill: tokens of each sequence already in the cache (a chunked prefill's earlier chunks,
    # a prefix-cache hit) and their block tables [N, max_blocks]; None when every sequence
    # starts from zero, so attention needs only this step's K/V.
    prefix_lens: list[int] | None = None
    prefill_block_tables: torch.Tensor | None = None
    num_prefill_tokens: int | None = None  # None: all rows if is_prefill, else none

    def prefill_rows(self, total: int) -> int:
        if not self.is_prefill:
            return 0
        return total if self.num_prefill_tokens is None else self.num_prefill_tokens


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
