"""Command-line options of ``bench/engine.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from .report import SECTION


@dataclass(frozen=True)
class Args:
    adapters: list[int]
    requests: int
    prompt_len: int
    output_len: int
    hidden: int
    layers: int
    repeats: int
    quiet: float
    write_docs: bool


def parse_args(argv: Sequence[str] | None = None, description: str | None = None) -> Args:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--adapters", default="1,8,32", help="comma-separated adapter counts")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512, help="hidden size (head_dim 64)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument(
        "--repeats", type=int, default=1, help="interleaved runs per system; fastest counts"
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="PCT",
        help="before each timed run, wait up to 2 min for the box's CPU pressure to drop below PCT %%",
    )
    p.add_argument(
        "--write-docs", action="store_true", help=f"update docs/benchmarks.md, section {SECTION!r}"
    )
    ns = p.parse_args(argv)
    counts = sorted({int(x) for x in ns.adapters.split(",") if x.strip()})
    if not counts or counts[0] < 1:
        p.error("--adapters needs positive counts")
    if ns.hidden % 64:
        p.error("--hidden must be a multiple of 64 (head_dim is 64)")
    if ns.repeats < 1:
        p.error("--repeats must be >= 1")
    return Args(
        counts,
        ns.requests,
        ns.prompt_len,
        ns.output_len,
        ns.hidden,
        ns.layers,
        ns.repeats,
        ns.quiet,
        ns.write_docs,
    )
