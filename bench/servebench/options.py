"""Command-line options of ``bench/serve.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .report import SECTION
from .stacks import CONFIGS


def int_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    a, b = int(lo), int(hi or lo)
    if not 1 <= a <= b:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI with 1 <= LO <= HI, got {text!r}")
    return a, b


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return out


def parse_args(argv: Sequence[str], description: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=None,
        help="HF model directory (default: the tiny demo model + 4 adapters)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="PEFT adapter to register (public) in each stack and include in the load; repeatable",
    )
    p.add_argument(
        "--rate",
        type=float_list,
        default=[2.0, 6.0],
        help="offered loads, requests/s (Poisson), comma-separated",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=45.0,
        help="seconds of arrivals per rate and configuration",
    )
    p.add_argument(
        "--prompt-len", type=int_range, default=(64, 128), help="prompt tokens, N or LO:HI"
    )
    p.add_argument("--output-len", type=int_range, default=(32, 64), help="max_tokens, N or LO:HI")
    p.add_argument("--tenants", type=int, default=4, help="tenants (one API key each), 1..8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--configs", default="disagg,colocated", help="comma-separated: disagg, colocated"
    )
    p.add_argument(
        "--colocated-workers", type=int, default=2, help="decode workers (role both) when colocated"
    )
    p.add_argument("--max-num-seqs", type=int, default=32, help="running batch per worker")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="worker device (default: cuda when available)")
    p.add_argument(
        "--kv-lengths", type=int_list, default=[128, 512, 2048], help="prompt tokens per hand-over"
    )
    p.add_argument(
        "--kv-reps", type=int, default=5, help="timed hand-overs per length (after one warm-up)"
    )
    p.add_argument("--raw-mb", type=int, default=256, help="MB of the raw NATS publish stream")
    p.add_argument("--no-kv", action="store_true", help="skip the K/V vs raw NATS part")
    p.add_argument(
        "--write-docs", action="store_true", help=f"update docs/benchmarks.md, section {SECTION!r}"
    )
    ns = p.parse_args(argv)
    ns.configs = [c.strip() for c in ns.configs.split(",") if c.strip()]
    bad = [c for c in ns.configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    if not 1 <= ns.tenants <= 8:
        p.error("--tenants must be 1..8")
    for spec in ns.adapter:
        if "=" not in spec:
            p.error(f"--adapter expects NAME=DIR, got {spec!r}")
    return ns
