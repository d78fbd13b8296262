"""Command-line options of ``bench/adapters.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from .config import SECTION


@dataclass(frozen=True)
class Args:
    ranks: list[int]
    repeats: int
    catalog: int
    requests: int
    warmup: int
    alphas: list[float]
    slots: int
    host_cache_mb: int
    concurrency: int
    prompt_len: int
    output_len: int
    adapter_rank: int
    skip_cold: bool
    skip_zipf: bool
    write_docs: bool
    seed: int


def parse_args(argv: Sequence[str] | None, description: str | None) -> Args:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ranks", default="8,16,64", help="cold-load: comma-separated adapter ranks")
    p.add_argument("--repeats", type=int, default=5, help="cold-load: runs per cell (median)")
    p.add_argument("--catalog", type=int, default=1000, help="zipf: registered adapters")
    p.add_argument("--requests", type=int, default=600, help="zipf: measured requests per run")
    p.add_argument("--warmup", type=int, default=200, help="zipf: unmeasured requests first")
    p.add_argument("--alphas", default="1.0,1.5", help="zipf: comma-separated exponents")
    p.add_argument("--slots", type=int, default=16, help="zipf: device adapter slots (max_loras)")
    p.add_argument("--host-cache-mb", type=int, default=64, help="zipf: loraplex host-cache budget")
    p.add_argument("--concurrency", type=int, default=32, help="zipf: requests in flight")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=8)
    p.add_argument("--adapter-rank", type=int, default=8, help="zipf: rank of the catalogue")
    p.add_argument("--skip-cold", action="store_true", help="skip part 1")
    p.add_argument("--skip-zipf", action="store_true", help="skip part 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--write-docs", action="store_true", help=f"replace '## {SECTION}' in docs/benchmarks.md"
    )
    ns = p.parse_args(argv)
    return Args(
        ranks=[int(x) for x in ns.ranks.split(",") if x],
        repeats=ns.repeats,
        catalog=ns.catalog,
        requests=ns.requests,
        warmup=ns.warmup,
        alphas=[float(x) for x in ns.alphas.split(",") if x],
        slots=ns.slots,
        host_cache_mb=ns.host_cache_mb,
        concurrency=ns.concurrency,
        prompt_len=ns.prompt_len,
        output_len=ns.output_len,
        adapter_rank=ns.adapter_rank,
        skip_cold=ns.skip_cold,
        skip_zipf=ns.skip_zipf,
        write_docs=ns.write_docs,
        seed=ns.seed,
    )
