"""Warm-up, the interleaved timed runs of the three systems, and their greedy agreement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loraplex import LLM

from .systems import run_hf, run_loop, run_loraplex
from .timing import Timed, fastest, fmt_run, timed
from .workload import Tokens, Workload, assign

if TYPE_CHECKING:
    from .options import Args

WARMUP_OUTPUT_LEN = 4


@dataclass(frozen=True)
class Row:
    adapters: int
    loraplex: Timed
    hf: Timed
    loop: Timed


def warm_up(llm: LLM, hf: torch.nn.Module, work: Workload, args: Args) -> None:
    """Every adapter once through both engines: fills loraplex's slots, warms allocators and caches."""
    loras = assign(args.requests, work.adapter_names[: max(args.adapters)])
    run_loraplex(llm, work.prompts, loras, WARMUP_OUTPUT_LEN)
    run_hf(hf, work.prompts, loras, WARMUP_OUTPUT_LEN)


def measure(llm: LLM, hf: torch.nn.Module, work: Workload, n: int, args: Args) -> Row:
    """The three systems, ``args.repeats`` times interleaved; the fastest run of each is kept."""
    loras = assign(len(work.prompts), work.adapter_names[:n])
    systems: dict[str, Callable[[], Tokens]] = {
        "loraplex": lambda: run_loraplex(llm, work.prompts, loras, args.output_len),
        "hf": lambda: run_hf(hf, work.prompts, loras, args.output_len),
        "loop": lambda: run_loop(llm, work.prompts, loras, args.output_len),
    }
    best: dict[str, Timed | None] = dict.fromkeys(systems)
    for rep in range(args.repeats):
        runs = {name: timed(fn, args.quiet) for name, fn in systems.items()}
        print(
            f"  {n:>3} adapters, run {rep + 1}: loraplex {fmt_run(runs['loraplex'])}  "
            f"HF+PEFT {fmt_run(runs['hf'])}  loop {fmt_run(runs['loop'])}",
            flush=True,
        )
        best = {name: fastest(best[name], t) for name, t in runs.items()}
    return Row(n, *(t for t in best.values() if t is not None))


def agreement(a: Tokens, b: Tokens) -> tuple[float, float]:
    """(% of token positions equal, % of requests with identical outputs)."""
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    total = sum(len(r) for r in a)
    exact = sum(ra == rb for ra, rb in zip(a, b, strict=True))
    return 100.0 * same / total, 100.0 * exact / len(a)
