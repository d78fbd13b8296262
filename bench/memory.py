"""Memory soak: steady mixed traffic on a live stack with no faults, while each service's resident
memory is sampled.  The floor is flat: once warm, a service's memory must not grow with the number
of requests it has served.

The stack is bench/chaos.py's (``loraplex up --schedulers 2``, one prefill and two decode workers,
the demo model on CPU, a 3-node NATS cluster and one Redis), without faults.  Traffic
(memorybench/mix.py): Poisson arrivals at ``--rate`` requests/s from two tenants, each request one
of these kinds: streamed, chat, on a demo adapter, ``n=2`` with logprobs, a client that hangs up
after two chunks, a 400 and a 404.  After ``--warmup-s`` (caches, lazy imports, allocator pools
settle) the run samples every service's memory (PSS: ``memorybench/rss.py``) every ``--sample-s``
for ``--seconds``, and fits it against requests served (least squares): the slope, in KiB per 1,000 requests, is what a leak
costs.  Then the in-flight gauges must read 0.  Exits 1 when a request ended otherwise than its kind
should, a service restarted, or a gauge stayed above 0.

    python bench/memory.py [--seconds 300] [--warmup-s 60] [--rate 4] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaosbench.health import leaks  # noqa: E402
from common import machine_line, markdown_table, run_live_bench, today  # noqa: E402
from failoverbench.stack import replicated_stack  # noqa: E402
from memorybench.mix import KINDS, Mix  # noqa: E402
from memorybench.rss import Samples  # noqa: E402

from loraplex.tooling.launcher import start_stack  # noqa: E402

SECTION = "Memory under steady load (bench/memory.py)"
KEYS = {"A": "sk-memory-bench-a", "B": "sk-memory-bench-b"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=300.0, help="how long memory is sampled")
    p.add_argument("--warmup-s", type=float, default=60.0, help="traffic before the first sample")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second, both tenants")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per request")
    p.add_argument("--max-num-seqs", type=int, default=8, help="batch slots per worker")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


async def soak(a: argparse.Namespace, tmp: Path) -> tuple[Mix, Samples, dict, list[str]]:
    cluster, rds, stack, args = replicated_stack(tmp, KEYS, a.max_num_seqs)
    try:
        base, _, _ = await asyncio.to_thread(start_stack, args, stack)
        clients = {
            t: openai.AsyncOpenAI(base_url=base + "/v1", api_key=k, max_retries=0)
            for t, k in KEYS.items()
        }
        served = [m.id for m in (await clients["A"].models.list()).data]
        mix = Mix(clients, served[0], served[1:] or served[:1], a.max_tokens)
        rng = random.Random(a.seed)
        await mix.run(a.rate, a.warmup_s, rng)
        print(f"{time.strftime('%H:%M:%S')} warm: {sum(mix.sent.values())} requests", flush=True)
        samples = Samples()
        warm = sum(mix.sent.values())
        samples.take(stack, 0)

        async def sample() -> None:
            while True:
                await asyncio.sleep(a.sample_s)
                samples.take(stack, sum(mix.sent.values()) - warm)

        sampler = asyncio.create_task(sample())
        await mix.run(a.rate, a.seconds, rng)
        sampler.cancel()
        samples.take(stack, sum(mix.sent.values()) - warm)
        gauges = await leaks(stack)
        return mix, samples, gauges, samples.restarted(stack)
    finally:
        stack.stop(timeout=10)
        rds.stop()
        cluster.stop()


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def render(
    argv: list[str], a: argparse.Namespace, result: tuple, minutes: float
) -> tuple[str, bool]:
    mix, samples, gauges, restarted = result
    served = samples.rows[-1][1]
    rows = []
    for name in sorted(samples.pids):
        points = [(sent, row[name]) for _, sent, row in samples.rows if name in row]
        first, last = points[0][1], points[-1][1]
        peak = max(y for _, y in points)
        half = len(points) // 2
        fits = [slope(points), slope(points[: half + 1]), slope(points[half:])]
        rows.append([
            name, f"{first:.0f}", f"{last:.0f}", f"{last - first:+.1f}", f"{peak:.0f}",
            *(f"{f * 1000 * 1024:+.0f}" for f in fits),
        ])  # fmt: skip
    table = markdown_table(
        ["service", "MiB when warm", "MiB at the end", "growth MiB", "peak MiB",
         "fitted KiB per 1,000 requests", "first half", "second half"],
        rows,
    )  # fmt: skip
    kinds = markdown_table(
        ["kind", "share", "sent (warm-up included)", "ended otherwise", "example"],
        [[k, f"{share:.0%}", mix.sent[k], mix.wrong[k], mix.examples.get(k, "")]
         for k, share in KINDS.items()],
    )  # fmt: skip
    held = {k: v for k, v in gauges.items() if v != 0}
    problems = [f"{sum(mix.wrong.values())} requests ended otherwise"] * bool(
        sum(mix.wrong.values())
    )
    problems += [f"restarted: {', '.join(restarted)}"] * bool(restarted)
    problems += [f"gauges not 0: {held}"] * bool(held)
    verdict = "**Every check passed.**" if not problems else f"**Failed**: {'; '.join(problems)}."
    text = "\n\n".join([
        f"Command: `{' '.join(['python bench/memory.py', *argv])}` ({today()}; {machine_line()}; "
        f"{minutes:.1f} min).",
        "The chaos soak's stack (`loraplex up --schedulers 2`, one prefill and two decode workers "
        f"with {a.max_num_seqs} slots, the demo model on CPU, a 3-node NATS cluster, one Redis) "
        f"without faults. Poisson arrivals at {a.rate:g} requests/s from two tenants, "
        f"{a.max_tokens} tokens each, of the kinds below; {a.warmup_s:g} s of warm-up, then "
        f"every service's memory (PSS, shared pages divided among the processes mapping them) every {a.sample_s:g} s for {a.seconds:g} s ({served} requests). "
        "*Fitted*: the least-squares slope of PSS against requests sent, over the run and over "
        "each half; a leak costs the same in both halves, memory that settles costs less in the "
        "second. The flat floor is 0.",
        table,
        kinds,
        f"In-flight gauges after the run: {held or 'all 0'}. {verdict}",
    ])  # fmt: skip
    return text, not problems


def main(argv: list[str]) -> int:
    return run_live_bench(argv, SECTION, parse, soak, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
