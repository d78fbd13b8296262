"""Live part of bench/prefix.py: cache-aware placement on a stack of two colocated workers.

Many system prompts, more than one worker's KV cache can keep: with ``--prefix-routing`` the
scheduler sends each prefix back to the worker that prefilled it, so each worker keeps about half
of them; without it requests spread by load, and both workers keep evicting the same prefixes.
Both stacks get the same requests; hits are read from the workers' ``/metrics`` counters.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from openai import AsyncOpenAI

from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.up_flags import parse_up_args

HIT = re.compile(
    r'loraplex_worker_prefix_cache_(hit|query)_tokens_total\{role="[^"]*",worker="([^"]+)"\} (\S+)'
)


@dataclass
class LiveResult:
    routing: bool
    seconds: float
    ttft: list[float]
    hit: dict[str, float]  # worker -> prompt tokens reused
    query: dict[str, float]
    served: dict[str, int]  # worker -> requests (from its query counter growth)


def plan(a: argparse.Namespace, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    systems = [
        torch.randint(4, vocab, (a.live_prefix_len,), generator=gen).tolist()
        for _ in range(a.live_prefixes)
    ]
    order = torch.randint(0, a.live_prefixes, (a.live_requests,), generator=gen).tolist()
    return [systems[i] + torch.randint(4, vocab, (16,), generator=gen).tolist() for i in order]


def _counters(metrics: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Prefix-cache counters from each worker's own /metrics."""
    text = "".join(httpx.get(url, timeout=10).text for url in metrics)
    hit: dict[str, float] = {}
    query: dict[str, float] = {}
    for kind, worker, value in HIT.findall(text):
        (hit if kind == "hit" else query)[worker] = float(value)
    return hit, query


def _settled_counters(metrics: list[str], expect_query: float) -> tuple[dict, dict]:
    """Counters once every worker's heartbeat has reported the run (stats lag ~1 s)."""
    deadline = time.monotonic() + 15
    while True:
        hit, query = _counters(metrics)
        if sum(query.values()) >= expect_query or time.monotonic() > deadline:
            return hit, query
        time.sleep(0.5)


async def _drive(base: str, model: str, prompts: list[list[int]], a) -> tuple[float, list]:  # type: ignore[no-untyped-def]
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    sem = asyncio.Semaphore(a.live_concurrency)
    ttft: list[float] = []

    async def one(prompt: list[int]) -> None:
        async with sem:
            t0 = time.perf_counter()
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=a.output_len, temperature=0, stream=True
            )
            first = None
            async for _ in stream:
                first = first or time.perf_counter() - t0
            ttft.append(first if first is not None else float("nan"))

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - start
    await client.close()
    return seconds, ttft


def run_one(routing: bool, a, model_dir: Path, tmp: Path, prompts: list[list[int]]) -> LiveResult:  # type: ignore[no-untyped-def]
    run_dir = tmp / f"live-{'on' if routing else 'off'}-{time.monotonic_ns()}"
    run_dir.mkdir()
    flags = [
        "--model", str(model_dir), "--port", str(free_port()), "--run-dir", str(run_dir),
        "--prefill-workers", "0", "--decode-workers", "2", "--dtype", "float32",
        "--max-num-seqs", str(a.live_concurrency), "--num-kv-blocks", str(a.live_kv_blocks),
        "--prefix-routing" if routing else "--no-prefix-routing",
    ]  # fmt: skip
    stack = Stack(run_dir)
    try:
        base, _, _ = start_stack(parse_up_args(flags), stack)
        model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
        scrape = [
            url + "/metrics"
            for name, url in stack.status.items()
            if not name.startswith("scheduler")
        ]
        hit0, query0 = _counters(scrape)
        seconds, ttft = asyncio.run(_drive(base, model, prompts, a))
        expect = sum(query0.values()) + sum(len(p) for p in prompts)
        hit1, query1 = _settled_counters(scrape, expect)
        stack.check_alive()
    finally:
        stack.stop()
    workers = sorted(query1)
    return LiveResult(
        routing,
        seconds,
        ttft,
        {w: hit1.get(w, 0) - hit0.get(w, 0) for w in workers},
        {w: query1.get(w, 0) - query0.get(w, 0) for w in workers},
        {w: round((query1[w] - query0.get(w, 0)) / len(prompts[0])) for w in workers},
    )


def live_rows(results: list[LiveResult]) -> list[list[str]]:
    rows = []
    for r in results:
        hit, query = sum(r.hit.values()), sum(r.query.values())
        rows.append(
            [
                "cache-aware placement (--prefix-routing)" if r.routing else "load only (peer)",
                f"{r.seconds:.1f}",
                f"{1e3 * statistics.median(r.ttft):.0f}",
                f"{100 * hit / max(1, query):.1f}%",
                " / ".join(str(r.served[w]) for w in sorted(r.served)),
            ]
        )
    return rows
