"""What a tenant's batch costs the other tenants, side by side, on a live stack.

One stack (``loraplex up``'s processes: one prefill and one decode worker, the demo model), two
tenants of equal weight.  Tenant ``beta`` sends ``--probes`` chat requests one after the other
(its interactive latency) in three phases:

* ``alone``: nothing else runs;
* ``beside a batch``: tenant ``alpha`` runs a ``--lines``-request batch through ``/v1/batches``;
* ``beside a burst``: ``alpha`` sends the same requests itself, ``--batch-concurrency`` at a time
  (what a client without the Batch API does).

Reported: beta's median and p90 latency per phase, and alpha's requests per second (batch: from
create to ``completed``).  The batch and the burst are both the tenant's own requests under the
scheduler's fairness, so beta should fare alike beside either.

    python bench/batches.py [--lines 64] [--probes 12] [--max-tokens 24] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, markdown_table, replace_doc_section, today  # noqa: E402

from loraplex.tooling.launcher import Stack, start_stack  # noqa: E402
from loraplex.tooling.ports import free_port  # noqa: E402
from loraplex.tooling.up_flags import parse_up_args  # noqa: E402

SECTION = "Batches beside interactive traffic (bench/batches.py)"
KEYS = {"alpha": "sk-bench-alpha", "beta": "sk-bench-beta"}
STACK_FLAGS = ["--dtype", "float32", "--device", "cpu", "--prefill-workers", "1",
               "--decode-workers", "1"]  # fmt: skip


def chat(model: str, text: str, max_tokens: int) -> dict:
    """Every answer as long as ``max_tokens`` (vLLM's ``ignore_eos``, sent as extra body)."""
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}  # fmt: skip


def sdk(body: dict) -> dict:
    """The same, spelled for the SDK's ``create``."""
    return {**{k: v for k, v in body.items() if k != "ignore_eos"},
            "extra_body": {"ignore_eos": body["ignore_eos"]}}  # fmt: skip


async def probe(client: openai.AsyncOpenAI, model: str, n: int, max_tokens: int) -> list[float]:
    """Beta's latencies, one request after the other."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        await client.chat.completions.create(**sdk(chat(model, f"probe {i}: more", max_tokens)))
        out.append(time.perf_counter() - t)
    return out


async def run_batch(client: openai.AsyncOpenAI, model: str, lines: int, max_tokens: int) -> float:
    rows = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": chat(model, f"line {i}: write on", max_tokens)} for i in range(lines)]  # fmt: skip
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    t = time.perf_counter()
    f = await client.files.create(file=("batch.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.2)
        batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.failed == 0, batch
    return time.perf_counter() - t


async def run_burst(
    client: openai.AsyncOpenAI, model: str, lines: int, max_tokens: int, concurrency: int
) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await client.chat.completions.create(
                **sdk(chat(model, f"line {i}: write on", max_tokens))
            )

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(lines)))
    return time.perf_counter() - t


async def phases(base: str, model: str, args: argparse.Namespace) -> list[list[str]]:
    def client(tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEYS[tenant], timeout=600)

    alpha, beta = client("alpha"), client("beta")
    await probe(beta, model, 2, args.max_tokens)  # warm-up
    rows = []
    alone = await probe(beta, model, args.probes, args.max_tokens)
    rows.append(_row("alone", alone, None, args))
    for name, work in (
        ("beside a batch", run_batch(alpha, model, args.lines, args.max_tokens)),
        ("beside a burst", run_burst(alpha, model, args.lines, args.max_tokens, args.concurrency)),
    ):
        task = asyncio.ensure_future(work)
        await asyncio.sleep(1.0)  # the batch (or burst) is under way
        lat = await probe(beta, model, args.probes, args.max_tokens)
        rows.append(_row(name, lat, await task, args))
    return rows


def _row(name: str, lat: list[float], alpha_s: float | None, args: argparse.Namespace) -> list[str]:
    p90 = sorted(lat)[max(0, int(round(0.9 * len(lat))) - 1)]
    rate = "" if alpha_s is None else f"{args.lines / alpha_s:.2f} ({alpha_s:.1f} s)"
    return [name, f"{statistics.median(lat):.2f}", f"{p90:.2f}", rate]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=64, help="requests in alpha's batch (and burst)")
    p.add_argument("--probes", type=int, default=12, help="beta's requests per phase")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=16, help="the burst's, = --batch-concurrency")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tenants = Path(tmp) / "tenants.json"
        tenants.write_text(json.dumps({"tenants": [{"name": n, "api_key": k, "weight": 1.0}
                                                    for n, k in KEYS.items()]}))  # fmt: skip
        stack = Stack(Path(tmp) / "stack")
        argv = ["--port", str(free_port()), "--run-dir", str(stack.run_dir),
                "--tenants", str(tenants), *STACK_FLAGS]  # fmt: skip
        try:
            base, model_dir, _ = start_stack(parse_up_args(argv), stack)
            rows = asyncio.run(phases(base, Path(model_dir).name, args))
        finally:
            stack.stop()
    table = markdown_table(
        ["beta's requests", "latency median (s)", "p90 (s)", "alpha's requests/s (wall)"], rows
    )
    print(table)
    if args.write_docs:
        cmd = (
            "python bench/batches.py " + " ".join(sys.argv[1:]).replace("--write-docs", "").strip()
        )
        replace_doc_section(
            SECTION,
            "\n".join(
                [
                    f"{today()}, {machine_line()}, load before: {load}. Command: `{cmd}`.",
                    "",
                    f"One stack (1 prefill + 1 decode worker, demo model, CPU), tenants alpha and beta of "
                    f"equal weight. Beta sends {args.probes} chat requests of {args.max_tokens} tokens one "
                    f"after the other; alpha runs {args.lines} such requests as a batch (`/v1/batches`, "
                    f"{args.concurrency} in flight) or sends them itself {args.concurrency} at a time.",
                    "",
                    table,
                ]
            ),
        )


if __name__ == "__main__":
    main()
