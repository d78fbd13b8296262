"""The "Scheduler at scale" section of docs/benchmarks.md, from one run's results."""

from __future__ import annotations

from collections.abc import Sequence

from common import markdown_table

from .cluster import Config, Result
from .fairness_scale import FairnessRow
from .live import LiveRow
from .redis_rate import RedisRow

SECTION = "Scheduler at scale (bench/scheduler.py)"
TARGET_PER_S = 50_000
TARGET_P99_US = 100.0


ALL = ("policy", "placement", "prefix")


def is_target(cfg: Config) -> bool:
    """The issue's target cell: 1,000 workers, 10,000 tenants (at the grid's prompt length)."""
    return cfg.workers == 1000 and cfg.tenants == 10_000 and cfg.prompt_tokens == 128


def sim_table(rows: Sequence[tuple[Config, Result, Result]]) -> str:
    head = [
        "workers", "tenants", "prompt", "code", "policy /s", "+ placement /s", "**decisions/s**",
        "decisions/s (mean)", "p50 µs", "p99 µs", "GC: full / longest ms / time",
        "linear: decisions/s", "(mean)", "p99 µs", "(timed)", "speed-up", "gateway µs",
    ]  # fmt: skip
    body = []
    for cfg, f, lin in rows:
        fast_all, lin_all = f.median_rate("prefix"), lin.median_rate("prefix")
        speed = f"{fast_all / lin_all:,.0f}x" if lin_all else "n/a"
        body.append(
            [
                f"{cfg.workers:,}", f"{cfg.tenants:,}", f"{cfg.prompt_tokens:,}", f.code,
                f"{f.median_rate('policy'):,.0f}",
                f"{f.median_rate('placement'):,.0f}", f"**{fast_all:,.0f}**",
                f"{f.rate_of(*ALL):,.0f}", f"{f.p50_us:.0f}", f"{f.p99_us:,.0f}",
                f"{f.gc_full} / {f.gc_longest_ms:,.0f} / {100 * f.gc_share:.0f} %",
                f"{lin_all:,.0f}", f"{lin.rate_of(*ALL):,.0f}", f"{lin.p99_us:,.0f}",
                f"{lin.decisions:,}", speed, f"{f.gateway_keys_us:.1f}",
            ]
        )  # fmt: skip
    return markdown_table(head, body)


def live_table(rows: Sequence[LiveRow]) -> str:
    head = ["path", "in flight", "submits/s", "errors", "CPU used / waiting for a CPU, per s"]
    names = {
        "nats": "bench → NATS → scheduler → fake worker",
        "http": "openai client → gateway → NATS → scheduler → fake worker",
        "nats+redis": "bench → NATS → scheduler (replica: lease + ledger in Redis) → fake worker",
        "http+redis": "openai client → gateway → NATS → scheduler (replica) → fake worker",
    }
    body = []
    for r in rows:
        cpu = ", ".join(f"{k} {u:.2f} / {w:.2f}" for k, (u, w) in r.cpu.items())
        body.append([names.get(r.path, r.path), r.concurrency, f"{r.per_s:,.0f}", r.errors, cpu])
    return markdown_table(head, body)


def fairness_table(rows: Sequence[FairnessRow]) -> str:
    head = [
        "tenants", "steps", "admissions", "backlogged", "worst pair |ΔW|", "2U",
        "worst counter spread", "U", "holds",
    ]  # fmt: skip
    body = []
    for r in rows:
        ok = r.worst_pair <= r.two_u and r.worst_counter_spread <= r.u
        body.append(
            [
                f"{r.tenants:,}", r.steps, f"{r.admissions:,}", f"{100 * r.backlogged_share:.1f} %",
                f"{r.worst_pair:,.0f}", f"{r.two_u:,.0f}", f"{r.worst_counter_spread:,.0f}",
                f"{r.u:,.0f}", "yes" if ok else "**NO**",
            ]
        )  # fmt: skip
    return markdown_table(head, body)


def redis_table(rows: Sequence[RedisRow]) -> str:
    return markdown_table(
        ["Redis write", "per second"], [[r.what, f"{r.per_s:,.0f}"] for r in rows]
    )


def beyond_text(
    sim: Sequence[tuple[Config, Result, Result]],
    live: Sequence[LiveRow],
    redis: Sequence[RedisRow],
) -> str:
    """Scaling with 2 and 4 replicas and the next bottleneck, from this run's figures."""
    at_scale = [f for c, f, _ in sim if is_target(c)]
    first = at_scale[0] if at_scale else (sim[0][1] if sim else None)
    per = first.median_rate("prefix") if first else 0.0
    per_cpu_us = 1e6 / per if per else 0.0
    by_path = {r.path: r.per_s for r in live}
    one_eval = next((r.per_s for r in redis if r.what.startswith("EVALSHA charge, 1")), 0.0)
    piped = next((r.per_s for r in redis if r.what.startswith("HINCRBYFLOAT, pipelined")), 0.0)
    server = next((r.per_s for r in redis if "redis-benchmark" in r.what), 0.0)
    lines = [
        "**Beyond one scheduler.** Scheduler replicas (issue 15, `scheduler/leader.py`) are "
        "active-standby: one leader holds the queue and the counters, so VTC's bound stays the "
        "single scheduler's. Decisions therefore do not scale with replicas: with 2 or 4 "
        f"replicas the cluster still makes one leader's **{per:,.0f} decisions/s** (measured "
        "above, 1,000 workers, 10,000 tenants), the standbys only shorten an outage. Scaling "
        "the rate means sharding the queue (tenants hashed to k leaders, each with its share of "
        "the workers); on paper, from the per-replica figure: "
        f"2 shards ≈ {2 * per:,.0f}/s, 4 shards ≈ {4 * per:,.0f}/s, at the price of fairness "
        "being exact only within a shard unless the counters are shared.",
        "",
        "Where the next bottleneck is, in the order a request meets them:",
        "",
    ]
    if "nats" in by_path:
        row = next(r for r in live if r.path == "nats")
        used = row.cpu.get("scheduler", (0.0, 0.0))[0]
        cpu_per = used / row.per_s * 1e6 if row.per_s else 0.0
        lines.append(
            f"- **The live path, not the policy.** Through NATS the scheduler process completed "
            f"{row.per_s:,.0f} submits/s using {used:.2f} CPU-s/s: {cpu_per:,.0f} µs of CPU per "
            f"submit, of which its decision code (policy, placement, prefix affinity) is about "
            f"{per_cpu_us:,.0f} µs. The rest is the bus: a SUBMIT request/reply, an assignment, "
            "a progress report, heartbeats and stats, each a msgpack encode/decode and an "
            "asyncio callback in the scheduler's one Python thread; and the whole path waits on "
            "four processes' round trips (with 64 in flight, none of them was busy all the time)."
        )
    if "http" in by_path:
        lines.append(
            f"- **The gateway.** With the gateway in front: {by_path['http']:,.0f} submits/s "
            "(tokenizing, validation, the SSE/JSON answer, uvicorn); it is the lowest figure, "
            "so gateways must scale out (they are stateless: run several behind a balancer)."
        )
    if "nats+redis" in by_path:
        lines.append(
            f"- **Redis on the decision path, with replicas.** A replica leader writes its "
            "placements to the ledger (a fenced Lua script) *before* it publishes their "
            "assignments. It writes a dispatch round's entries (up to 64 decisions) in one "
            "fenced write, not one per decision (one EVALSHA per round trip runs at "
            f"{one_eval:,.0f}/s from Python here): the live path with replicas made "
            f"{by_path['nats+redis']:,.0f} submits/s"
            + (f", against {by_path['nats']:,.0f} without Redis" if "nats" in by_path else "")
            + f". (A pipeline runs {piped:,.0f} HINCRBYFLOAT/s from one Python client; the "
            f"server itself takes {server:,.0f}/s.)"
        )
    if server:
        writes = 3  # admission, one usage report, the finish: the fewest charges per request
        lines.append(
            f"- **Shared counters for sharded leaders.** If k leaders shared live VTC counters "
            f"in Redis, every charge would be a write: at least {writes} per request (admission, "
            f"a usage report, the finish). One Redis server takes {server:,.0f} HINCRBYFLOAT/s "
            f"(C client, pipelined), so at most ≈ {server / writes:,.0f} decisions/s in total, "
            f"{server / writes / per:.1f}x one leader's decision rate, however many leaders: "
            "counters would have to be batched per leader (local counters, periodic merges) to "
            "go further."
        )
    return "\n".join(lines)
