"""Failover under load (issue 15): open-loop streaming load of two tenants (4:1) on a live stack
while a scheduler, a decode worker and a NATS node are SIGKILLed one after another.

The stack is ``loraplex up``'s (tooling/stack.py) on a 3-node NATS cluster (tooling/nats_cluster.py)
and one Redis, with ``--schedulers 2``, one prefill and two decode workers, the demo model on CPU.
Each event is reported over its window (the kill to the next kill, ``--phase-s``): the requests in
flight at the kill or started in the window, how many completed, were migrated (a scheduler
placed them again after tokens had streamed: its log says so) or failed; each tenant's longest
stretch without a token while it had a request in flight; the A:B ratio of tokens served in the
``--phase-s`` before and after the kill.  The supervisor restarts what was killed (the NATS node
is not restarted).

    python bench/failover.py [--rate-a 2 --rate-b 0.5] [--phase-s 20] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402
from failoverbench.load import Load  # noqa: E402
from failoverbench.report import (  # noqa: E402
    HEADERS,
    Event,
    event_row,
    failure_notes,
    migrated_ids,
)
from failoverbench.stack import metric, replicated_stack  # noqa: E402

from loraplex.scheduler.leader import LEASE_SUFFIX  # noqa: E402
from loraplex.tooling.launcher import Stack, start_stack  # noqa: E402

SECTION = "Failover (bench/failover.py)"
KEYS = {"A": "sk-failover-bench-a", "B": "sk-failover-bench-b"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-a", type=float, default=2.0, help="tenant A's requests per second")
    p.add_argument("--rate-b", type=float, default=0.5, help="tenant B's requests per second")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per request")
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds between kills")
    p.add_argument("--max-num-seqs", type=int, default=8, help="batch slots per worker")
    p.add_argument("--skip-nats", action="store_true", help="no NATS node kill")
    p.add_argument("--keep", default=None, help="copy the stack's logs to this directory")
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def leader(redis_url: str) -> str:
    """The scheduler that holds the lease (``loraplex up`` names them scheduler, scheduler-1)."""
    with redis.Redis.from_url(redis_url) as r:
        raw = r.get("loraplex" + LEASE_SUFFIX)
    assert raw, "no scheduler leads"
    return raw.decode().rsplit(":", 1)[0]


def running(stack: Stack, name: str) -> float:
    """Requests in the worker's batch (its own /metrics); 0 when it cannot be read."""
    url = stack.status.get(name)
    return (metric(url, "loraplex_worker_requests_running") if url else None) or 0.0


async def busiest_decode(stack: Stack, workers: int) -> str:
    """The decode worker with the most requests running (waiting up to 5 s for one with 2), so
    the kill has requests to migrate."""
    names = [f"decode-{i}" for i in range(workers)]
    deadline = time.monotonic() + 5
    while True:
        counts = {n: await asyncio.to_thread(running, stack, n) for n in names}
        best = max(names, key=lambda n: counts[n])
        if counts[best] >= 2 or time.monotonic() > deadline:
            return best
        await asyncio.sleep(0.2)


async def run(a: argparse.Namespace, tmp: Path) -> tuple[list, list[Event], Path, str]:
    cluster, rds, stack, args = replicated_stack(tmp, KEYS, a.max_num_seqs)
    events: list[Event] = []
    try:
        base, _, _ = await asyncio.to_thread(start_stack, args, stack)  # it runs its own loop
        clients = {
            t: openai.AsyncOpenAI(base_url=base + "/v1", api_key=k, max_retries=0, timeout=120)
            for t, k in KEYS.items()
        }
        model = (await clients["A"].models.list()).data[0].id
        load = Load(clients, {"A": a.rate_a, "B": a.rate_b}, model, a.max_tokens)
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        kills: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("scheduler (leader)", lambda: asyncio.sleep(0, leader(rds.url))),
            ("decode worker", lambda: busiest_decode(stack, 2)),
        ]
        if not a.skip_nats:
            kills.append(("NATS node", lambda: asyncio.sleep(0, "nats-0")))
        await asyncio.sleep(a.phase_s / 3)  # warm-up, then a window with no kill (the baseline)
        t0 = time.monotonic()
        await asyncio.sleep(a.phase_s)
        events.append(Event("none (baseline)", t0, time.monotonic()))
        for name, victim in kills:
            target = await victim()
            print(f"{time.strftime('%H:%M:%S')} killing the {name}: {target}", flush=True)
            at = time.monotonic()
            if target == "nats-0":
                cluster.kill(0)
            else:
                stack.proc(target).kill()
            events.append(Event(f"{name} ({target})", at, at + a.phase_s))
            await asyncio.sleep(a.phase_s)
        stop.set()
        await asyncio.wait_for(runner, 180)
        return load.records, events, stack.run_dir, machine_line()
    finally:
        stack.stop(timeout=10)
        rds.stop()
        cluster.stop()


def render(argv: list[str], a: argparse.Namespace, records, events, run_dir: Path, machine: str) -> str:  # type: ignore[no-untyped-def]  # fmt: skip
    migrated = migrated_ids(run_dir)
    rows = [event_row(records, e, a.phase_s, migrated) for e in events]
    notes = failure_notes(records, events)
    left = "" if not a.skip_nats else " The NATS node kill was skipped (`--skip-nats`)."
    shown = [x for i, x in enumerate(argv) if x != "--keep" and argv[i - 1 : i] != ["--keep"]]
    kills = [r for r, e in zip(rows, events, strict=True) if not e.name.startswith("none")]
    failed = sum(int(r[4]) for r in kills)
    worst = max((float(g) for r in kills[:2] for g in r[5:7]), default=0.0)
    stall = max((float(r[7]) for r in kills[:2]), default=0.0)
    verdict = (
        f"Failed requests over all kills: {failed}; longest gap after the scheduler and worker "
        f"kills: {worst:.2f} s (targets: 0 and 3 s); longest stall of one request: {stall:.2f} s."
    )
    parts = [
        f"Command: `{' '.join(['python bench/failover.py', *shown])}` ({today()}; {machine}).",
        f"`loraplex up --schedulers 2` with one prefill and two decode workers ({a.max_num_seqs} "
        f"slots each, the demo model on CPU) on a 3-node NATS cluster and one Redis. Open-loop "
        f"streaming load: tenant A {a.rate_a:g} and tenant B {a.rate_b:g} requests/s (Poisson), "
        f"{a.max_tokens} tokens each (greedy). Every {a.phase_s:g} s one process is SIGKILLed: the "
        "leading scheduler, then the decode worker running the most requests, then NATS node 0 (the supervisor restarts the services, "
        f"not the NATS node).{left} The first row is a window without a kill, for comparison. *Requests*: in flight at the kill or started before the next "
        "one (one in flight across two kills counts in both rows); *migrated*: placed again after tokens had streamed (the scheduler's log); *longest "
        "gap*: the longest time, from 1 s before the kill to the next kill, without a token for "
        "that tenant while one of its requests was in flight; *longest stall*: the longest one "
        "request of the row waited for its next (or first) token in that window, which a tenant's "
        "gap hides while its other requests stream on; *A:B tokens*: tokens served in the "
        f"{a.phase_s:g} s before and after the kill. Targets: 0 failed for a scheduler or worker "
        "kill, gaps of 3 s or less.",
        markdown_table(HEADERS, rows),
        verdict,
    ]
    if notes:
        parts += ["Failed requests:", "\n".join(f"- {n}" for n in notes[:20])]
    return "\n\n".join(parts)


def main(argv: list[str]) -> int:
    a = parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        records, events, run_dir, machine = asyncio.run(run(a, Path(tmp)))
        text = render(argv, a, records, events, run_dir, machine)
        if a.keep:
            shutil.copytree(run_dir, a.keep, dirs_exist_ok=True)
    publish(SECTION, text, a.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
