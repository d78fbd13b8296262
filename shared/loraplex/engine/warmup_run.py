"""Run the warm-up patterns (``engine/warmup.py``) once through an engine's model at start-up.

Each pattern becomes a batch of made-up sequences that goes through the same ``prepare`` and
``execute`` as a real step (batch building, LoRA kernels, attention, logits), so whatever a
kernel compiles for that shape is compiled here.  Nothing else of the engine is touched: no
scheduler, allocator or prefix-cache entry; the made-up K/V land in cache blocks no request
holds yet.  Adapter patterns give their slots the pattern's rank for the duration of the run
(the slot weights are still zero at start-up, so the deltas are zero), then clear them.

Before the patterns, ``kernels.lora_warmup`` launches (and for the v2 kernels on CUDA, tunes) every
LoRA kernel shape of the model, so the patterns then compile the block sizes it chose.
``EXTRA_STEPS`` is where other kernel modules add their own warm-up; each is called once with the
engine and the spec, after the patterns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loraplex import env
from loraplex.engine.sequence import Sequence
from loraplex.engine.warmup import LEVELS, Level, Pattern, WarmupSpec, warmup_patterns
from loraplex.kvcache.block_allocator import blocks_for
from loraplex.lora.adapter import LORA_TARGETS
from loraplex.sampling_params import SamplingParams

if TYPE_CHECKING:
    from loraplex.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)

EXTRA_STEPS: list[Callable[[LLMEngine, WarmupSpec], None]] = []
_PARAMS = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


@dataclass(frozen=True)
class WarmupReport:
    level: str
    patterns: int
    seconds: float
    triton_compiles: int | None  # Triton kernels compiled (or loaded from disk) during warm-up
    graphs_compiled: int | None  # torch.compile graphs (FlexAttention) compiled during warm-up
    lora: str = ""  # what the LoRA kernels' own warm-up did

    def line(self) -> str:
        counts = [
            f"{n} {what}"
            for n, what in (
                (self.triton_compiles, "Triton kernel specializations"),
                (self.graphs_compiled, "torch.compile graphs"),
            )
            if n is not None
        ]
        counts += [self.lora] if self.lora else []
        extra = f" ({'; '.join(counts)})" if counts else ""
        return (
            f"warm-up ({self.level}): {self.patterns} batch patterns in {self.seconds:.1f} s{extra}"
        )


def spec_of(engine: LLMEngine) -> WarmupSpec:
    cfg, graphs = engine.config, engine.runner.decode_graphs
    sizes = tuple(graphs.sizes) if graphs is not None and graphs.capture_enabled else ()
    return WarmupSpec(
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens,
        cfg.max_loras,
        cfg.max_lora_rank,
        engine.max_model_len,
        cfg.block_size,
        sizes,
    )


def warm_up(engine: LLMEngine, level: Level | None = None, force: bool = False) -> WarmupReport:
    """Compile what every batch shape needs, before the first request (CUDA only: the CPU path
    compiles nothing unless ``force``).  ``level`` defaults to ``LORAPLEX_WARMUP``."""
    level = level or _env_level()
    if level == "off" or (engine.device.type != "cuda" and not force):
        return WarmupReport(level, 0, 0.0, None, None)
    spec = spec_of(engine)
    patterns = warmup_patterns(spec, level)
    if engine.slots.resident():
        log.warning("warm-up: adapters already resident; skipping the adapter patterns")
        patterns = [p for p in patterns if not p.adapters]
    with count_compiles() as compiled:
        start = time.perf_counter()
        lora = _lora_kernels(engine, spec)
        for p in patterns:
            run_pattern(engine, p)
        for step in EXTRA_STEPS:
            step(engine, spec)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        seconds = time.perf_counter() - start
    n_triton = None if compiled.triton is None else len(compiled.triton)
    report = WarmupReport(level, len(patterns), seconds, n_triton, compiled.dynamo, lora)
    log.info(report.line())
    return report


def _lora_kernels(engine: LLMEngine, spec: WarmupSpec) -> str:
    """The LoRA kernels' own warm-up (and tuning) over every decode size an eager step or a
    graph can have and the prefill tilings; returns a summary ("" when nothing ran)."""
    from loraplex.kernels.lora_warmup import warm_up_lora_kernels

    top = max(spec.graph_sizes, default=0)
    sizes = [*spec.graph_sizes, *range(top + 1, spec.max_num_seqs + 1)]
    done = warm_up_lora_kernels(
        engine.model_config,
        spec.max_loras,
        spec.max_lora_rank,
        engine.dtype,
        engine.device,
        sizes,
        spec.max_num_batched_tokens,
    )
    if not done.launches:
        return ""
    tuned = f", {len(done.tuned)} shapes tuned" if done.tuned else ""
    return f"LoRA kernels {done.kernel}: {done.launches} launches{tuned} in {done.seconds:.1f} s"


def _env_level() -> Level:
    raw = env.WARMUP.get().strip().lower()
    if raw not in LEVELS:
        raise ValueError(f"{env.WARMUP.name} must be one of {', '.join(LEVELS)}, got {raw!r}")
    return raw  # type: ignore[return-value]


def run_pattern(engine: LLMEngine, p: Pattern) -> torch.Tensor:
    """One model step over the made-up batch of ``p``; returns its logits."""
    runner, bs = engine.runner, engine.config.block_size
    blocks = _BlockIds(engine.kv_cache.num_blocks)
    vocab = engine.model_config.vocab_size
    prefill = [
        _seq(f"w{i}", p.prefix + p.tokens, p.prefix, bs, blocks, vocab) for i in range(p.seqs)
    ]
    decode = []
    for i in range(p.decode_rows):
        ctx = min((p.table_width - 1) * bs + 1, engine.max_model_len - 1)
        decode.append(_seq(f"d{i}", ctx, ctx - 1, bs, blocks, vocab, p.table_width))
    slots = _assign_slots([*prefill, *decode], p)
    with _ranks(engine, slots, p.rank):
        if prefill:
            counts = [p.tokens] * len(prefill) + [1] * len(decode)
            inp = runner.prepare([*prefill, *decode], True, counts, len(prefill))
        else:
            inp = runner.prepare(decode, False)
        logits, _ = runner.execute(inp)
    return logits


class _BlockIds:
    """Block ids handed out in turn, wrapping around: made-up sequences may share blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks, self.next = num_blocks, 0

    def take(self, n: int) -> list[int]:
        out = [(self.next + i) % self.num_blocks for i in range(n)]
        self.next = (self.next + n) % self.num_blocks
        return out


def _seq(
    rid: str, tokens: int, cached: int, bs: int, blocks: _BlockIds, vocab: int, width: int = 0
):  # type: ignore[no-untyped-def]
    seq = Sequence(f"warmup-{rid}", [(7 * i + 3) % vocab for i in range(tokens)], _PARAMS)
    seq.num_cached = cached
    seq.block_table = blocks.take(max(width, blocks_for(tokens, bs)))
    return seq


def _assign_slots(seqs: list[Sequence], p: Pattern) -> list[int]:
    """Row i uses adapter i mod ``p.adapters`` (the first half none with ``base_rows``)."""
    if not p.adapters:
        return []
    skip = len(seqs) // 2 if p.base_rows else 0
    for i, seq in enumerate(seqs[skip:]):
        seq.lora_slot = i % p.adapters
    return sorted({s.lora_slot for s in seqs if s.lora_slot >= 0})


@contextmanager
def _ranks(engine: LLMEngine, slots: list[int], rank: int) -> Iterator[None]:
    weights = engine.lora_weights
    for t in LORA_TARGETS:
        weights.ranks[t][:, slots] = rank
    try:
        yield
    finally:
        for slot in slots:
            weights.clear(slot)


@dataclass
class Compiles:
    """What was compiled inside ``count_compiles``: Triton kernel specializations (None where
    this Triton version has no cache hook) and torch.compile graphs (None without dynamo)."""

    triton: list[str] | None = None
    dynamo: int | None = None


@contextmanager
def count_compiles() -> Iterator[Compiles]:
    """Records compiles while inside; the yielded ``Compiles`` is filled in on exit."""
    out = Compiles()
    hooks, before = _triton_hooks(), _dynamo_graphs()
    seen: list[str] = []
    if hooks is not None:
        previous = hooks.jit_cache_hook

        def hook(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(str(kwargs.get("repr", "?")))
            return previous(*args, **kwargs) if previous is not None else False

        hooks.jit_cache_hook = hook
    try:
        yield out
    finally:
        if hooks is not None:
            hooks.jit_cache_hook = previous
            out.triton = seen
        after = _dynamo_graphs()
        if before is not None and after is not None:
            out.dynamo = after - before


def _triton_hooks():  # type: ignore[no-untyped-def]
    try:
        from triton import knobs
    except ImportError:
        return None
    runtime = getattr(knobs, "runtime", None)
    return runtime if hasattr(runtime, "jit_cache_hook") else None


def _dynamo_graphs() -> int | None:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])
