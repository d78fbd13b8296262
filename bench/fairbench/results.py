"""Result rows (one per workload x policy run), their per-tenant columns, the markdown tables and
the time-averaged accumulated difference."""

from __future__ import annotations

from dataclasses import dataclass

from common import markdown_table

from loraplex.tooling.simulator import SimResult, accumulated_difference


@dataclass
class Row:
    workload: str
    policy: str
    stats: dict[str, float]
    res: SimResult
    wall_s: float


@dataclass
class LiveRow(Row):
    finished: dict[str, int]
    rejected: dict[str, int]
    errors: dict[str, int]


def per_tenant(res: SimResult, what: str) -> str:
    if what == "rate":
        vals = [res.service_at(t, res.duration_s) / res.duration_s for t in sorted(res.service)]
        return " / ".join(f"{v:.0f}" for v in vals)
    lat = [res.latencies[t] for t in sorted(res.latencies)]
    return " / ".join(f"{sum(v) / len(v):.1f}" if v else "-" for v in lat)


def table(rows: list[Row]) -> str:
    headers = [
        "workload",
        "policy",
        "max diff",
        "avg diff",
        "max acc. diff",
        "throughput (tok/s)",
        "service/s per tenant",
        "mean TTFT per tenant (s)",
    ]
    body = [
        [
            r.workload,
            r.policy,
            f"{r.stats['max_diff']:.1f}",
            f"{r.stats['avg_diff']:.1f}",
            f"{r.stats['max_acc_diff']:.0f}",
            f"{r.stats['throughput']:.0f}",
            per_tenant(r.res, "rate"),
            per_tenant(r.res, "ttft"),
        ]
        for r in rows
    ]
    return markdown_table(headers, body)


def mean_acc_diff(res: SimResult) -> float:
    """Time average over ``[0, T]`` of ``max_i W_i(0,t) - min_i W_i(0,t)``."""
    acc = accumulated_difference(res)
    ends = [*res.times[1:], res.duration_s]
    area = sum(
        a * max(0.0, min(e, res.duration_s) - t)
        for a, t, e in zip(acc, res.times, ends, strict=True)
    )
    return area / res.duration_s


def live_table(rows: list[LiveRow]) -> str:
    headers = [
        "workload",
        "policy",
        "max diff",
        "avg diff",
        "max / avg acc. diff",
        "throughput (tok/s)",
        "service/s per tenant",
        "mean TTFT per tenant (s)",
        "finished per tenant",
        "429s / errors",
    ]
    body = [
        [
            r.workload,
            r.policy,
            f"{r.stats['max_diff']:.1f}",
            f"{r.stats['avg_diff']:.1f}",
            f"{r.stats['max_acc_diff']:.0f} / {r.stats['avg_acc_diff']:.0f}",
            f"{r.stats['throughput']:.0f}",
            per_tenant(r.res, "rate"),
            per_tenant(r.res, "ttft"),
            " / ".join(str(r.finished[t]) for t in sorted(r.finished)),
            f"{sum(r.rejected.values())} / {sum(r.errors.values())}",
        ]
        for r in rows
    ]
    return markdown_table(headers, body)
