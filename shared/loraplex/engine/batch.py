"""The one place where a list of sequences becomes tensors for a model step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraplex.engine.sequence import Sequence
from loraplex.forward_context import AttentionMeta, ForwardContext, LoraMeta


@dataclass(frozen=True)
class ModelInput:
    seqs: list[Sequence]  # sequences that get logits, in logits row order
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    logits_index: torch.Tensor  # [N] row of each sampled sequence's last token in T
    ctx: ForwardContext
    # Prefill chunks that stop short of the sequence's end: (seq, tokens computed), no logits.
    partial: list[tuple[Sequence, int]] = field(default_factory=list)
    # Rows whose logits score the next prompt token (requests with prompt_logprobs).
    prompt_rows: list[PromptRows] = field(default_factory=list)


@dataclass(frozen=True)
class PromptRows:
    """Rows ``row .. row + count - 1`` of a step hold prompt positions ``first_target - 1 ..``
    of ``seq``; each one's logits score the prompt token after it (from ``first_target`` on)."""

    seq: Sequence
    row: int
    count: int
    first_target: int

    @property
    def targets(self) -> list[int]:
        return self.seq.prompt_token_ids[self.first_target : self.first_target + self.count]


def _prompt_rows(seq: Sequence, row: int, start: int, n: int) -> PromptRows | None:
    """The rows of a chunk (positions ``start .. start + n - 1`` at ``row``) that score prompt
    tokens not scored yet; None when there are none."""
    if not seq.wants_prompt_logprobs:
        return None
    first = max(start, len(seq.prompt_logprobs))  # position whose logits score token first + 1
    last = min(start + n, len(seq.prompt_token_ids) - 1)
    if last <= first:
        return None
    return PromptRows(seq, row + first - start, last - first, first + 1)


def _segments(seqs: list[Sequence], rows_per_seq: list[int]) -> tuple[list[int], list[int], int]:
    """Adapter segments over rows already sorted by slot: (starts [G+1], slots [G], longest)."""
    starts, slots, row = [0], [], 0
    for seq, n in zip(seqs, rows_per_seq, strict=True):
        row += n
        if slots and slots[-1] == seq.lora_slot:
            starts[-1] = row
        else:
            slots.append(seq.lora_slot)
            starts.append(row)
    longest = max((e - s for s, e in zip(starts[:-1], starts[1:], strict=False)), default=0)
    return starts, slots, longest


def _slot_map(seq: Sequence, start: int, end: int, block_size: int) -> list[int]:
    table = seq.block_table
    return [table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def build_prefill(
    seqs: list[Sequence],
    block_size: int,
    device: torch.device,
    num_new_tokens: list[int] | None = None,
    decode_seqs: list[Sequence] | None = None,
) -> ModelInput:
    """Pack each sequence's next ``num_new_tokens`` uncached tokens (default: all of them), then
    one row per ``decode_seqs`` sequence (a mixed step).  Within each part rows are sorted by
    adapter slot, so rows with the same slot form SGMV segments.  Sequences whose chunk reaches
    their last token, and every decode row, get logits; the rest are returned in ``partial``."""
    counts = num_new_tokens or [s.num_uncached for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].lora_slot)  # stable: arrival order
    seqs = [seqs[i] for i in order]
    counts = [counts[i] for i in order]
    decode = sorted(decode_seqs or [], key=lambda s: s.lora_slot)
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    cu = [0]
    prefixes = []
    prompt_rows = []
    for seq, n in zip(seqs, counts, strict=True):
        tokens = seq.all_token_ids
        start = seq.num_cached
        if (rows := _prompt_rows(seq, len(ids), start, n)) is not None:
            prompt_rows.append(rows)
        ids.extend(tokens[start : start + n])
        pos.extend(range(start, start + n))
        slots.extend(_slot_map(seq, start, start + n, block_size))
        cu.append(len(ids))
        prefixes.append(start)
    num_prefill = len(ids)
    for seq in decode:
        ids.append(seq.last_token_id)
        pos.append(seq.num_tokens - 1)
        slots.extend(_slot_map(seq, seq.num_tokens - 1, seq.num_tokens, block_size))
    seg_starts, seg_slots, longest = _segments([*seqs, *decode], [*counts, *([1] * len(decode))])
    as_t = lambda x, dt=torch.int32: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    attn = AttentionMeta(
        is_prefill=True,
        slot_mapping=as_t(slots, torch.int64),
        cu_seqlens=cu,
        block_tables=_tables(decode, as_t) if decode else None,
        context_lens=as_t([s.num_tokens for s in decode]) if decode else None,
        prefix_lens=prefixes if any(prefixes) else None,
        prefill_block_tables=_tables(seqs, as_t) if any(prefixes) else None,
        num_prefill_tokens=num_prefill,
    )
    lora = LoraMeta(
        active=any(s >= 0 for s in seg_slots),
        is_prefill=True,
        seg_starts=as_t(seg_starts),
        seg_slots=as_t(seg_slots),
        indices=None,
        max_seg_len=longest,
    )
    done = [i for i, (s, n) in enumerate(zip(seqs, counts, strict=True)) if n == s.num_uncached]
    rows = [cu[i + 1] - 1 for i in done] + list(range(num_prefill, num_prefill + len(decode)))
    return ModelInput(
        seqs=[seqs[i] for i in done] + decode,
        input_ids=as_t(ids, torch.int64),
        positions=as_t(pos, torch.int64),
        logits_index=as_t(rows, torch.int64),
        ctx=ForwardContext(attn, lora),
        partial=[(s, n) for s, n in zip(seqs, counts, strict=True) if n < s.num_uncached],
        prompt_rows=prompt_rows,
    )


def _tables(seqs: list[Sequence], as_t) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Block tables [N, widest] int32, short rows padded with block 0 (never read)."""
    width = max(len(s.block_table) for s in seqs)
    return as_t([s.block_table + [0] * (width - len(s.block_table)) for s in seqs])


def build_decode(seqs: list[Sequence], block_size: int, device: torch.device) -> ModelInput:
    """One new token per sequence; each row carries its own adapter slot (BGMV).

    Rows are also sorted by slot and described as segments, so backends that batch better per
    adapter (the torch path on CPU) can run the decode LoRA as segmented matmuls.
    """
    seqs = sorted(seqs, key=lambda s: s.lora_slot)
    seg_starts, seg_slots, longest = _segments(seqs, [1] * len(seqs))
    ids = [s.last_token_id for s in seqs]
    pos = [s.num_tokens - 1 for s in seqs]
    slots = [_slot_map(s, s.num_tokens - 1, s.num_tokens, block_size)[0] for s in seqs]
    as_t = lambda x, dt=torch.int32: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    lora_slots = [s.lora_slot for s in seqs]
    attn = AttentionMeta(
        is_prefill=False,
        slot_mapping=as_t(slots, torch.int64),
        cu_seqlens=[],
        block_tables=_tables(seqs, as_t),
        context_lens=as_t([s.num_tokens for s in seqs]),
    )
    lora = LoraMeta(
        active=any(s >= 0 for s in lora_slots),
        is_prefill=False,
        seg_starts=as_t(seg_starts),
        seg_slots=as_t(seg_slots),
        indices=as_t(lora_slots),
        max_seg_len=longest,
    )
    return ModelInput(
        seqs=list(seqs),
        input_ids=as_t(ids, torch.int64),
        positions=as_t(pos, torch.int64),
        logits_index=torch.arange(len(seqs), device=device),
        ctx=ForwardContext(attn, lora),
    )
