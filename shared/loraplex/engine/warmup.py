"""Which batch shapes a worker can meet, so start-up can compile every kernel specialization.

Triton compiles a kernel again for each new combination of constexprs (block sizes picked from
segment lengths) and of integer arguments that are 1 or divisible by 16 (row tiles, block-table
widths); FlexAttention's ``torch.compile`` recompiles once when shapes start to vary.  Left to
first use, that compile runs inside an engine step and stalls every running request: on an
H200 the first batch with all 64 rows on one adapter took 3.75 s instead of 1.0 s.

``warmup_patterns`` lists, from the engine limits alone (a pure function), one batch per
shape class; ``engine/warmup_run.py`` runs each once at start-up.  Classes covered:

* prefill token buckets 16, 32, 64, ... up to ``max_num_batched_tokens``, each as base-only
  rows, one adapter (one segment), ``min(max_loras, prompts)`` distinct adapters (many
  segments) and half base / half adapter;
* prompts over a cached prefix (chunked prefill, prefix-cache hits), once per pair of query and
  gathered-context shape buckets of the prefill attention;
* every rank up to ``max_lora_rank`` (powers of two, then the maximum);
* decode batch sizes that the CUDA graphs do not cover (the graphs are compiled at capture),
  base and with adapters;
* mixed steps (prefill + decode rows) with decode block tables 1, 2 and 16 blocks wide.

``light`` keeps every other token bucket and only the largest rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loraplex.engine.cuda_graphs import capture_sizes
from loraplex.kernels.flex_plan import padded
from loraplex.kernels.flex_prefill import MAX_GATHER_TOKENS
from loraplex.kvcache.block_allocator import blocks_for

Level = Literal["full", "light", "off"]
LEVELS: tuple[Level, ...] = ("full", "light", "off")
PROMPT_LEN = 256  # prompt length of the warm-up prefill batches (shorter buckets: one prompt)
MIN_BUCKET = 16
TABLE_WIDTHS = (1, 2, 16)  # decode block-table widths: 1, not a multiple of 16, a multiple
RANKS = (8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class WarmupSpec:
    """The engine limits that decide which shapes a step can have."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_loras: int
    max_lora_rank: int
    max_model_len: int
    block_size: int
    graph_sizes: tuple[int, ...] = ()  # decode batch sizes replayed from captured graphs


@dataclass(frozen=True)
class Pattern:
    """One warm-up batch: ``seqs`` prompts of ``tokens`` new tokens after ``prefix`` cached
    ones, then ``decode_rows`` decode rows with block tables ``table_width`` blocks wide."""

    seqs: int
    tokens: int
    prefix: int = 0
    decode_rows: int = 0
    table_width: int = 1
    adapters: int = 0  # distinct adapters over the rows (0: every row is a base row)
    base_rows: bool = False  # with adapters: the first half of the rows use none
    rank: int = 0

    @property
    def kind(self) -> str:
        if not self.seqs:
            return "decode"
        return "mixed" if self.decode_rows else "prefill"

    @property
    def name(self) -> str:
        parts = [self.kind]
        if self.seqs:
            cached = f" after {self.prefix} cached" if self.prefix else ""
            parts.append(f"{self.seqs} x {self.tokens} tok{cached}")
        if self.decode_rows:
            parts.append(f"{self.decode_rows} decode rows ({self.table_width}-block tables)")
        if self.adapters:
            mix = ", half base" if self.base_rows else ""
            parts.append(f"{self.adapters} adapter(s) r{self.rank}{mix}")
        else:
            parts.append("base")
        return ", ".join(parts)


def token_buckets(max_tokens: int, light: bool = False) -> list[int]:
    """16, 32, 64, ... below ``max_tokens``, then ``max_tokens``; ``light``: every other one."""
    sizes, n = [], MIN_BUCKET
    while n < max_tokens:
        sizes.append(n)
        n *= 2
    if light:
        sizes = sizes[::2]
    return [*sizes, max_tokens]


def lora_ranks(max_rank: int, light: bool = False) -> list[int]:
    if light:
        return [max_rank]
    return [r for r in RANKS if r < max_rank] + [max_rank]


def _prompts(spec: WarmupSpec, tokens: int, limit: int) -> tuple[int, int]:
    """(prompts, tokens each) for a prefill of about ``tokens`` tokens, each prompt at most
    ``limit`` long."""
    n = max(1, min(spec.max_num_seqs, -(-tokens // min(PROMPT_LEN, limit))))
    return n, max(1, min(tokens // n, limit))


def _prefill(spec: WarmupSpec, bucket: int, rank: int) -> list[Pattern]:
    n, per = _prompts(spec, bucket, spec.max_model_len - 1)
    out = [Pattern(n, per), Pattern(n, per, adapters=1, rank=rank)]
    if n > 1 and spec.max_loras > 1:
        out.append(Pattern(n, per, adapters=min(spec.max_loras, n), rank=rank))
    if n > 1:
        out.append(Pattern(n, per, adapters=1, base_rows=True, rank=rank))
    return out


def _paged(spec: WarmupSpec, bucket: int, light: bool) -> list[Pattern]:
    """About ``bucket`` new tokens over cached prefixes, once per shape bucket the gathered
    context (``flex_plan.padded``) can fall in: twice the new tokens up to what one launch
    gathers (``light``: the smallest and the largest)."""
    longest = spec.max_model_len - 1
    if longest < 2:
        return []
    n, per = _prompts(spec, bucket, longest // 2)
    most = min(MAX_GATHER_TOKENS, n * longest)
    out, kv = [], 2 * n * per
    while True:
        prefix = max(1, min(longest - per, (min(kv, most) - n * per) // n))
        out.append(Pattern(n, per, prefix=prefix))
        if kv >= most:
            break
        kv *= 2
    return [out[0], out[-1]] if light else out


def _decode_sizes(spec: WarmupSpec, light: bool) -> list[int]:
    sizes = [s for s in capture_sizes(spec.max_num_seqs) if s not in spec.graph_sizes]
    return sizes[::2] + sizes[-1:] if light and sizes else sizes


def warmup_patterns(spec: WarmupSpec, level: Level = "full") -> list[Pattern]:
    """Every batch shape class a worker with these limits can meet, one pattern each."""
    if level == "off":
        return []
    light, top = level == "light", spec.max_lora_rank
    out: list[Pattern] = []
    paged: dict[tuple[int, int], Pattern] = {}
    for bucket in token_buckets(spec.max_num_batched_tokens, light):
        out += _prefill(spec, bucket, top)
        for p in _paged(spec, bucket, light):  # one per (query, context) shape bucket
            paged.setdefault((padded(p.seqs * p.tokens), padded(p.seqs * (p.prefix + p.tokens))), p)
    out += paged.values()
    small = min(MIN_BUCKET, spec.max_num_batched_tokens, spec.max_model_len - 1)
    out += [Pattern(1, small, adapters=1, rank=r) for r in lora_ranks(top, light)[:-1]]
    widest = blocks_for(spec.max_model_len - 1, spec.block_size)
    rows = min(2, spec.max_num_seqs - 1)
    lora = min(spec.max_loras, rows + 1)
    for width in sorted({min(w, widest) for w in TABLE_WIDTHS}) if rows >= 1 else []:
        out.append(Pattern(1, small, decode_rows=rows, table_width=width))
        out.append(Pattern(1, small, decode_rows=rows, table_width=width, adapters=lora, rank=top))
    width = min(TABLE_WIDTHS[1], widest)
    for size in _decode_sizes(spec, light):
        out.append(Pattern(0, 0, decode_rows=size, table_width=width))
        lora = min(spec.max_loras, size)
        out.append(Pattern(0, 0, decode_rows=size, table_width=width, adapters=lora, rank=top))
    return list(dict.fromkeys(out))  # a tiny engine can map two classes onto one pattern
