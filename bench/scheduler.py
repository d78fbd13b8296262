"""The scheduler at cluster scale: its own decision code, the live path, fairness, Redis.

    python bench/scheduler.py [--workers 100,1000] [--tenants 100,10000,100000]
                              [--long-prompts 1024,4096]
                              [--fast-seconds 3] [--linear-seconds 2] [--live-seconds 8]
                              [--no-live] [--no-fairness] [--no-redis] [--quick] [--write-docs]

1. **Decisions** (``schedbench/cluster.py``): the scheduler's policy (VTC with length prediction)
   and placement (``WorkerRegistry.place`` with prefix affinity) on a simulated cluster, no NATS:
   every worker/tenant pair of the grid with 128-token prompts, then the target cell (1,000
   workers, 10,000 tenants) with each of ``--long-prompts``; Zipf traffic over 1,000 adapters.
   Prompts' prefix keys come in the SUBMIT, hashed by the gateway (timed apart).  Side by side in the
   same run, from the same state: the linear scans they replaced (``policies/linear.py``,
   ``placement_scan.py``), given at most ``--linear-seconds`` each so the run ends in minutes.
   decisions/s counts whole cycles (enqueue, decision, a usage report, the finish); p50/p99 are
   of the decision alone (pick, place, admit, commit, prefix record).
2. **Live path** (``schedbench/live.py``): real nats-server, scheduler and gateway processes, fake
   workers that answer at once; submits/s with and without the gateway, and with the scheduler
   as a replica on Redis (lease + ledger).
3. **Fairness at scale** (``schedbench/fairness_scale.py``): VTC's 2U bound (Thm 4.4, sampled
   pairs) and counter spread (Lemma 4.3, all tenants) at 10,000 backlogged tenants.
4. **Redis counter writes** (``schedbench/redis_rate.py``): HINCRBYFLOAT / EVALSHA rates on a
   real redis-server: the figure behind "beyond one scheduler".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cpu_pressure_avg10,
    load_average,
    machine_line,
    replace_doc_section,
    today,
)
from schedbench.cluster import Config, Result, measure  # noqa: E402
from schedbench.report import (  # noqa: E402
    ALL,
    SECTION,
    TARGET_P99_US,
    TARGET_PER_S,
    beyond_text,
    fairness_table,
    is_target,
    live_table,
    redis_table,
    sim_table,
)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def python_speed_us() -> float:
    """Microseconds for ``sum(range(1000))`` now: ~8 on an idle modern core; a loaded box's
    figures scale with it."""
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(100):
            sum(range(1000))
        best = min(best, (time.perf_counter() - t0) / 100 * 1e6)
    return best


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=_ints, default=[100, 1000])
    p.add_argument("--tenants", type=_ints, default=[100, 10_000, 100_000])
    p.add_argument("--long-prompts", type=_ints, default=[1024, 4096])
    p.add_argument(
        "--target-runs",
        type=int,
        default=3,
        help="independent runs of the target cell (1,000 x 10,000); its row is the median one",
    )
    p.add_argument("--fast-seconds", type=float, default=3.0)
    p.add_argument("--linear-seconds", type=float, default=2.0)
    p.add_argument("--live-seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--no-live", action="store_true")
    p.add_argument("--no-fairness", action="store_true")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument(
        "--no-interpreted",
        action="store_true",
        help="compiled: skip re-running the target cell interpreted (LORAPLEX_NATIVE=off)",
    )
    p.add_argument("--json-out", help=argparse.SUPPRESS)  # the interpreted re-run's results
    p.add_argument("--quick", action="store_true", help="small grid, short runs (a smoke test)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.workers, args.tenants, args.long_prompts = [100], [100, 1000], [512]
        args.fast_seconds = args.linear_seconds = 0.5
        args.live_seconds = 2.0
    os.environ.setdefault("LORAPLEX_LOG_LEVEL", "WARNING")
    speed_before, pressure = python_speed_us(), cpu_pressure_avg10()
    from schedbench.live import runqueue_seconds

    wait0, wall0 = runqueue_seconds(os.getpid()), time.perf_counter()
    sim = []
    grid = [Config(w, t) for w in args.workers for t in args.tenants]
    w_long, t_long = (1000, 10_000) if not args.quick else (args.workers[0], args.tenants[0])
    grid += [Config(w_long, t_long, prompt_tokens=n) for n in args.long_prompts]
    target_rates: list[float] = []  # decisions/s of each run of the target cell
    for cfg in grid:
        workers, tenants = cfg.workers, cfg.tenants
        fast, linear, build = measure(cfg, args.fast_seconds, args.linear_seconds)
        if is_target(cfg) and args.target_runs > 1:
            # This box drifts by 5-10 % between runs (string-hash layouts, other load): the row
            # is the median of several runs, each from a freshly built state.
            runs = [(fast, linear, build)]
            for _ in range(args.target_runs - 1):
                gc.collect()
                runs.append(measure(cfg, args.fast_seconds, args.linear_seconds))
            runs.sort(key=lambda r: r[0].median_rate("prefix"))
            target_rates = [r[0].median_rate("prefix") for r in runs]
            fast, linear, build = runs[len(runs) // 2]
        sim.append((cfg, fast, linear))
        print(
            f"{workers:>5} workers {tenants:>7} tenants {cfg.prompt_tokens:>5}-token prompts "
            f"({fast.code}): "
            f"{fast.median_rate('prefix'):>9,.0f}/s"
            f" (mean {fast.rate_of(*ALL):,.0f}/s, policy {fast.median_rate('policy'):,.0f}/s)"
            f" p50 {fast.p50_us:.0f} µs p99 {fast.p99_us:.0f} µs | linear "
            f"{linear.median_rate('prefix'):>7,.0f}/s p99 {linear.p99_us:,.0f} µs "
            f"(state built in {build:.0f} s; gateway hashing {fast.gateway_keys_us:.1f} µs)",
            flush=True,
        )
        gc.collect()
    if args.json_out:
        rows = [[asdict(c), asdict(f), asdict(lin)] for c, f, lin in sim]
        Path(args.json_out).write_text(json.dumps({"sim": rows, "target_rates": target_rates}))
        return 0
    interpreted_rates: list[float] = []
    if sim and sim[0][1].code == "compiled" and not args.no_interpreted:
        rows, interpreted_rates = _interpreted(args, w_long, t_long)
        sim += rows
    waited = (runqueue_seconds(os.getpid()) - wait0) / (time.perf_counter() - wall0)
    speed_after = python_speed_us()

    live = []
    if not args.no_live:
        from schedbench.live import run_live

        live += run_live(args.concurrency, args.live_seconds, http=True)
        live += run_live(args.concurrency, args.live_seconds, http=False, redis=True)
        for r in live:
            print(f"live {r.path}: {r.per_s:,.0f} submits/s ({r.errors} errors) cpu {r.cpu}")

    fairness = []
    if not args.no_fairness:
        from schedbench.fairness_scale import check

        fairness.append(
            check(tenants=1000, steps=300) if args.quick else check(tenants=10_000, steps=600)
        )
        print(fairness[-1])

    redis = []
    if not args.no_redis:
        from schedbench.redis_rate import run_redis

        redis = run_redis(seconds=1.0 if args.quick else 2.0)
        for r in redis:
            print(f"redis {r.what}: {r.per_s:,.0f}/s")

    target = [f for c, f, _ in sim if is_target(c)]
    if target:
        f = target[0]
        rate = f.median_rate("prefix")
        print(
            f"target (1,000 workers, 10,000 tenants): {rate:,.0f}/s "
            f"({'met' if rate >= TARGET_PER_S else 'not met'}), p99 {f.p99_us:.0f} µs "
            f"({'met' if f.p99_us < TARGET_P99_US else 'not met'})"
            + (f"; runs {', '.join(f'{r:,.0f}' for r in target_rates)}" if target_rates else "")
        )
    if args.write_docs:
        box = (speed_before, speed_after, pressure, waited)
        body = docs_body(args, sim, live, fairness, redis, box, target_rates, interpreted_rates)
        replace_doc_section(SECTION, body)
        print(f"wrote '{SECTION}' to docs/benchmarks.md")
    return 0


def _interpreted(args, workers: int, tenants: int) -> tuple[list, list[float]]:  # type: ignore[no-untyped-def]
    """The target cell again with the scheduler's modules interpreted (a child process with
    ``LORAPLEX_NATIVE=off``): the compiled core's gain, side by side."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [
            sys.executable, __file__, "--workers", str(workers), "--tenants", str(tenants),
            "--long-prompts", "", "--target-runs", str(args.target_runs),
            "--fast-seconds", str(args.fast_seconds), "--linear-seconds", str(args.linear_seconds),
            "--no-live", "--no-fairness", "--no-redis", "--json-out", str(out),
        ]  # fmt: skip
        subprocess.run(cmd, env={**os.environ, "LORAPLEX_NATIVE": "off"}, check=True)
        data = json.loads(out.read_text())
    rows = [(Config(**c), Result(**f), Result(**lin)) for c, f, lin in data["sim"]]
    return rows, data["target_rates"]


def docs_body(args, sim, live, fairness, redis, box, target_rates, interpreted_rates) -> str:  # type: ignore[no-untyped-def]
    speed_before, speed_after, pressure, waited = box
    cmd = "python bench/scheduler.py --write-docs" + (" --quick" if args.quick else "")
    parts = [
        f"`{cmd}` ({today()}; {machine_line()}; load average {load_average()}, CPU pressure "
        f"{pressure if pressure is not None else 'n/a'} % before the run). The box is shared "
        "with other engineers' test runs: during the decision runs the bench process spent "
        f"{waited:.2f} s per second runnable but waiting for a CPU, and that time is inside "
        "the figures (means and p99 most; p50 least). `sum(range(1000))` took "
        f"{speed_before:.0f} / {speed_after:.0f} µs (best of 20) before / after, the speed of "
        "the core when the bench had it. Columns of one row were measured in the same run, "
        "from the same state.",
        "",
        "**Decisions** on a simulated cluster (the scheduler's own code, no NATS): colocated "
        "workers with 32 batch slots and 16 resident adapters each (Zipf over 1,000 adapters), "
        "held at 90 % of their slots; every tenant backlogged (2 requests queued, closed loop); "
        "each request's adapter Zipf-drawn, its prompt the adapter's system prompt (half) and "
        "tokens of its own (half), 128 output tokens; its prefix keys hashed by the gateway and "
        "sent in the SUBMIT (*gateway µs*: that hashing, per request, in the gateway). Rates are 1 / the median time the scheduler's "
        "code spent per request: *policy* (pick, admit, enqueue with its lift, a usage report, "
        "the finish), *+ placement* (`place`, commit, release), **decisions/s** adds prefix "
        "affinity (the prompt's block keys, their holders, the record): everything the service "
        "does per request short of the bus. *(mean)*: 1 / the mean time, which takes in the "
        "few decisions that a garbage collection or another process on this box held up for "
        "milliseconds. *GC*: Python's collector during the run: full collections, its longest "
        "pause, and its share of the run's time. p50/p99: one decision, pick → prefix record. "
        "Linear: the scans this replaced (`policies/linear.py`, "
        "`placement_scan.py`), from the same state, stopped after "
        f"{args.linear_seconds:g} s; they decided the same requests in the same order "
        "(checked by the bench). *Code*: how the scheduler's modules ran: *compiled* is the "
        "default wherever `make setup` could build them (the same sources compiled with mypyc: "
        "`tooling/build_native.py`, `loraplex/native.py`; the linear scans compiled too), "
        "*interpreted* is CPython on the sources (`LORAPLEX_NATIVE=off`, a child process of the "
        "same run).",
        "",
        sim_table(sim),
        "",
        f"Targets at 1,000 workers and 10,000 tenants: ≥ {TARGET_PER_S:,} decisions/s and p99 < "
        f"{TARGET_P99_US:.0f} µs. "
        + _target_line(sim, speed_before, speed_after)
        + (
            f" The row is the median of {len(target_rates)} runs, each from a fresh state: "
            + " / ".join(f"{r:,.0f}" for r in target_rates)
            + " decisions/s."
            if len(target_rates) > 1
            else ""
        )
        + (
            " Interpreted, the same cell: "
            + " / ".join(f"{r:,.0f}" for r in interpreted_rates)
            + " decisions/s."
            if interpreted_rates
            else ""
        ),
    ]
    if live:
        parts += [
            "",
            f"**Live path**, {args.live_seconds:g} s each with {args.concurrency} requests in "
            "flight: real `nats-server`, `python -m loraplex.scheduler` and "
            "`python -m loraplex.gateway` (demo tokenizer, base model, open mode); 4 fake "
            "workers in their own process answer every assignment at once with one token. "
            "Last column: CPU seconds each process used per second, and seconds it spent "
            "runnable but waiting for a CPU (the box's other load).",
            "",
            live_table(live),
        ]
    if fairness:
        parts += [
            "",
            "**Fairness at scale** in the simulator (`tooling/simulator.py`, heap VTC; M = 50,000 "
            "batch tokens, inputs and outputs 1-32 tokens, every tenant sending 3x its fair share "
            "after 3 queued at t = 0): Thm 4.4's |W_f - W_g| ≤ 2U over every both-backlogged "
            "interval of 2,000 random tenant pairs, and Lemma 4.3's counter spread over *all* "
            "backlogged tenants, after every step.",
            "",
            fairness_table(fairness),
        ]
    if redis:
        parts += [
            "",
            "**Redis counter writes** (real `redis-server`, loopback, no persistence):",
            "",
        ]
        parts += [redis_table(redis)]
    parts += ["", beyond_text(sim, live, redis)]
    return "\n".join(parts)


def _target_line(sim, speed_before: float, speed_after: float) -> str:  # type: ignore[no-untyped-def]
    target = [f for c, f, _ in sim if is_target(c)]
    if not target:
        return "(not in this run's grid)"
    f = target[0]
    rate = f.median_rate("prefix")
    return (
        f"Measured here: {rate:,.0f} decisions/s at the median "
        f"({'met' if rate >= TARGET_PER_S else '**not met**'}), {f.rate_of(*ALL):,.0f}/s from "
        f"the means, p99 {f.p99_us:,.0f} µs "
        f"({'met' if f.p99_us < TARGET_P99_US else '**not met**'}). Mean µs per decision: "
        + ", ".join(f"{k} {v:.1f}" for k, v in f.parts.items())
        + "; medians (cumulative): "
        + ", ".join(f"{k} {v:.1f}" for k, v in f.medians.items())
        + "."
    )


if __name__ == "__main__":
    sys.exit(main())
