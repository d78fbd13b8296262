"""Chaos soak: open-loop streaming load of two tenants on a live stack while random processes are
SIGKILLed every few seconds; then the stack must heal, serve every request right, and hold none.

The stack is bench/failover.py's: ``loraplex up --schedulers 2`` with one prefill and two decode
workers (the demo model on CPU) on a 3-node NATS cluster and one Redis; the supervisor restarts
the services, the bench restarts the NATS nodes.  Load: tenant A ``--rate-a`` and tenant B
``--rate-b`` requests/s (Poisson), three fixed prompts each, greedy, ``--max-tokens`` tokens
(``ignore_eos``), streamed.  Every ``--gap-s`` (x U(0.6, 1.4)) for ``--seconds`` one fault drawn
from chaosbench/faults.py's ``FAULTS`` (``--seed``).  Each stream ends completed (the reference
text: the same prompt's run before any fault), completed with another text, failed cleanly,
truncated or hung (chaosbench/load.py).  Then: faults stop, dead NATS nodes are started, every
service must run and every worker heart-beat; ``--final`` requests per tenant must all complete
with the reference text; the in-flight gauges of the workers and schedulers must read 0.  Exits
1 when a stream hung or was truncated, the final batch failed or a gauge shows a leak.

    python bench/chaos.py [--seconds 120] [--seed 1] [--gap-s 6] [--adapters N] [--redis-faults]
                          [--keep DIR] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaosbench.faults import Action, Chaos  # noqa: E402
from chaosbench.health import Heartbeats, leaks, quiesce  # noqa: E402
from chaosbench.load import Load, Record  # noqa: E402
from chaosbench.report import actions_table, after_table, messages_table, outcomes_table  # noqa: E402
from common import machine_line, run_live_bench, today  # noqa: E402
from failoverbench.report import migrated_ids  # noqa: E402
from failoverbench.stack import replicated_stack  # noqa: E402

from loraplex.scheduler.settings import SchedulerSettings  # noqa: E402
from loraplex.tooling.launcher import start_stack  # noqa: E402

QUEUE_WAIT_S = SchedulerSettings.max_queue_wait_s  # the schedulers' default

SECTION = "Chaos soak (bench/chaos.py)"
KEYS = {"A": "sk-chaos-bench-a", "B": "sk-chaos-bench-b"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0, help="how long load and faults run")
    p.add_argument("--seed", type=int, default=1, help="draws the faults and the arrivals")
    p.add_argument("--gap-s", type=float, default=6.0, help="mean seconds between faults")
    p.add_argument("--rate-a", type=float, default=2.0, help="tenant A's requests per second")
    p.add_argument("--rate-b", type=float, default=0.67, help="tenant B's requests per second")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    # Above the schedulers' --max-queue-wait (60 s), so that a request shed at its end fails.
    p.add_argument("--hang-s", type=float, default=90.0, help="a stream silent this long hangs")
    p.add_argument("--final", type=int, default=4, help="final batch: requests per tenant")
    p.add_argument("--max-num-seqs", type=int, default=8, help="batch slots per worker")
    p.add_argument("--quiesce-s", type=float, default=300.0, help="most time to heal after")
    p.add_argument("--adapters", type=int, default=0, help="demo adapters to use (0..4)")
    p.add_argument("--redis-faults", action="store_true", help="kill and restart Redis too")
    p.add_argument(
        "--max-queue-wait", default=None, help="the schedulers' --max-queue-wait (their default)"
    )
    p.add_argument(
        "--keep",
        default=None,
        help="copy the stack's logs to this directory (by default only after an unexpected "
        "outcome, to .loraplex/chaos-<time>)",
    )
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


@dataclass
class Soak:
    records: list[Record] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    t0: float = 0.0
    missing: list[str] = field(default_factory=list)  # what kept the stack from healing
    quiesce_s: float = 0.0
    final: list[Record] = field(default_factory=list)
    leaks_before: dict[str, float | None] = field(default_factory=dict)
    leaks_after: dict[str, float | None] = field(default_factory=dict)
    migrated: set[str] = field(default_factory=set)


async def soak(a: argparse.Namespace, tmp: Path) -> Soak:
    extra = ["--max-queue-wait", a.max_queue_wait] if a.max_queue_wait is not None else []
    cluster, rds, stack, args = replicated_stack(tmp, KEYS, a.max_num_seqs, extra)
    out = Soak()
    try:
        base, _, _ = await asyncio.to_thread(start_stack, args, stack)  # it runs its own loop
        clients = {
            t: openai.AsyncOpenAI(base_url=base + "/v1", api_key=k, max_retries=0, timeout=3600)
            for t, k in KEYS.items()
        }
        served = [m.id for m in (await clients["A"].models.list()).data]
        if len(served) <= a.adapters:
            raise SystemExit(f"--adapters {a.adapters}: the stack serves {served}")
        load = Load(clients, served[: 1 + a.adapters], a.max_tokens, a.hang_s)
        chaos = Chaos(stack, cluster, rds, a.seed, a.redis_faults)
        async with Heartbeats.watch(cluster.urls) as beats:
            await load.take_references()
            out.t0 = time.monotonic()
            rates = {"A": a.rate_a, "B": a.rate_b}
            runner = asyncio.create_task(load.run(rates, a.seconds, random.Random(a.seed)))
            await chaos.run(out.t0, a.seconds, a.gap_s)
            await runner
            print(f"{time.strftime('%H:%M:%S')} soak over; quiescing", flush=True)
            calm = time.monotonic()
            await chaos.restore(out.t0)
            out.missing = await quiesce(stack, beats, chaos.lead, a.quiesce_s)
            out.quiesce_s = time.monotonic() - calm
            out.leaks_before = await leaks(stack)
            out.final = await load.batch(a.final)
            out.leaks_after = await leaks(stack)
        out.records, out.actions = load.records, chaos.actions
        out.migrated = migrated_ids(stack.run_dir)
        return out
    finally:
        stack.stop(timeout=10)
        rds.stop()
        cluster.stop()
        keep = a.keep or (unexpected_logs_dir() if unexpected(out) else None)
        if keep:
            shutil.copytree(stack.run_dir, keep, dirs_exist_ok=True)
            for i, node in enumerate(cluster.nodes):
                shutil.copy(node.data_dir / "nats.log", Path(keep) / f"nats-{i}.log")
            print(f"{time.strftime('%H:%M:%S')} the stack's logs are in {keep}", flush=True)


# What a soak's faults are expected to cause; anything else keeps the logs (a rare race is
# not caught twice).
EXPECTED_FAILURES = ("overloaded", "Redis is unavailable", "no worker", "no scheduler")


def unexpected(s: Soak) -> bool:
    """The soak died, or a request ended in a way its faults do not explain."""
    return not s.records or any(
        r.failed and not any(why in r.message for why in EXPECTED_FAILURES) for r in s.records
    )


def unexpected_logs_dir() -> str:
    return str(Path(".loraplex") / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}")


def render(argv: list[str], a: argparse.Namespace, s: Soak, minutes: float) -> tuple[str, bool]:
    """The docs section, and whether every check passed."""
    shown = [x for i, x in enumerate(argv) if x != "--keep" and argv[i - 1 : i] != ["--keep"]]
    after, problems = after_table(s.missing, s.quiesce_s, s.final, s.leaks_before, s.leaks_after)
    bad = {o: sum(r.outcome == o for r in s.records) for o in ("hung", "truncated")}
    problems[:0] = [f"{n} {o}" for o, n in bad.items() if n]
    differs = sum(r.outcome == "completed, text differs" for r in s.records)
    failed = sum(r.outcome == "failed cleanly" for r in s.records)
    took = sorted(r.end - r.start for r in s.records if r.end is not None and not r.failed)
    median = f"{took[len(took) // 2]:.2f} s" if took else "n/a"
    verdict = (
        f"{len(s.actions)} faults in {a.seconds:g} s; {len(s.records)} requests: "
        f"{failed} failed cleanly, {bad['truncated']} truncated, {bad['hung']} hung, "
        f"{differs} completed with another text; a completed request took {median} (median). "
        + ("**Every check passed.**" if not problems else f"**Failed**: {'; '.join(problems)}.")
    )
    on = (
        f" on the base model or one of {a.adapters} demo adapters (paged from Redis)"
        if a.adapters
        else ""
    )
    redis = ", or the one Redis (the next Redis fault starts it from its AOF)" * a.redis_faults
    parts = [
        f"Command: `{' '.join(['python bench/chaos.py', *shown])}` ({today()}; {machine_line()}; "
        f"{minutes:.1f} min).",
        f"`loraplex up --schedulers 2` with one prefill and two decode workers ({a.max_num_seqs} "
        "slots each, the demo model on CPU) on a 3-node NATS cluster and one Redis. Open-loop "
        f"streaming load: tenant A {a.rate_a:g} and tenant B {a.rate_b:g} requests/s (Poisson), "
        f"three fixed prompts each{on}, {a.max_tokens} tokens (greedy, `ignore_eos`). Every "
        f"{a.gap_s:g} s on average (x 0.6-1.4) one fault, drawn with seed {a.seed}: SIGKILL of "
        "the leading scheduler, the standby one, a decode worker, the prefill worker, a NATS "
        "node (the next NATS fault starts it again), or two at once (leader and a decode "
        f"worker, a decode worker and the prefill worker, both decode workers){redis}. The "
        "supervisor "
        "restarts the services, with its backoff (doubling only for a service that dies before "
        "it came up: within 30 s of its start and before its `/ready` answered for 5 s). "
        f"The schedulers' `--max-queue-wait` is {a.max_queue_wait or f'{QUEUE_WAIT_S:g}'} s. "
        "*Completed*: `[DONE]` after the same text as the prompt's run before "
        "any fault (*text differs*: a duplicated or missing token across a migration); *failed "
        "cleanly*: an error status with an OpenAI error body, or an SSE error event; "
        "*truncated*: the body ended with neither `[DONE]` nor an error; *hung*: nothing arrived "
        f"for {a.hang_s:g} s (the schedulers fail a request still queued after "
        "`--max-queue-wait` with a 503, and the gateway ends one silent for 120 s with a 504); "
        "*migrated*: "
        "placed again after tokens had streamed (the schedulers' logs). After the soak the "
        "faults stop, a dead NATS node (or Redis) is started again, "
        "and the stack must heal: every service up, every worker heart-beating since its "
        f"restart; then {a.final} requests per tenant must complete with the reference text, "
        "and the workers' `loraplex_worker_requests_running` and the schedulers' "
        "`loraplex_scheduler_inflight_requests` / `loraplex_scheduler_queued_requests` must "
        "read 0 (no request held after its end).",
        outcomes_table(s.records, s.migrated),
        verdict,
        "After the soak:",
        after,
        "Faults (time since the load started):",
        actions_table(s.actions, s.records, s.t0),
    ]
    messages = messages_table(s.records)
    if messages:
        parts += ["Why requests did not complete (grouped by message):", messages]
    return "\n\n".join(parts), not problems


def main(argv: list[str]) -> int:
    return run_live_bench(argv, SECTION, parse, soak, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
