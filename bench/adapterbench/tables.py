"""Markdown tables of the cold-load and Zipf results."""

from __future__ import annotations

from common import markdown_table

from .cold_load import ColdRow
from .zipf_run import ZipfRow


def ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x >= 0.1 else f"{x * 1000:.1f}"


def cold_tables(rows: list[ColdRow]) -> tuple[str, str]:
    redis = markdown_table(
        [
            "rank",
            "file (MiB)",
            "Redis fetch + sha256 (ms)",
            "of which sha256 (ms)",
            "parse (ms)",
            "copy to slot (ms)",
            "total, p50 (ms)",
            "total, best (ms)",
        ],
        [
            [
                str(r.rank),
                f"{r.file_mb:.0f}",
                ms(r.redis["fetch"]),
                ms(r.redis["sha"]),
                ms(r.redis["parse"]),
                ms(r.redis["copy"]),
                ms(r.redis["total"]),
                ms(r.redis_best),
            ]
            for r in rows
        ],
    )
    disk = markdown_table(
        [
            "rank",
            "read, page cache (ms)",
            "total, page cache (ms)",
            "read, cache dropped (ms)",
            "total, cache dropped (ms)",
            "Redis total / disk total (page cache)",
        ],
        [
            [
                str(r.rank),
                ms(r.disk_warm["read"]),
                ms(r.disk_warm["total"]),
                ms(r.disk_cold["read"]),
                ms(r.disk_cold["total"]),
                f"{r.redis['total'] / r.disk_warm['total']:.1f}x",
            ]
            for r in rows
        ],
    )
    return redis, disk


def zipf_table(rows: list[ZipfRow]) -> str:
    headers = [
        "alpha",
        "system",
        "distinct adapters",
        "host hit",
        "slot hit",
        "fetches",
        "fetched (MiB)",
        "tokens/s",
        "p50 latency (ms)",
        "p95 latency (ms)",
        "retried / failed",
    ]
    body = []
    for r in rows:
        body.append(
            [
                f"{r.alpha:g}",
                "loraplex (Redis + host LRU + slots)"
                if r.system == "loraplex"
                else "disk on every miss",
                str(r.distinct),
                f"{r.host_hit:.1%}",
                f"{r.slot_hit:.1%}",
                str(r.fetches),
                f"{r.fetched_mb:.1f}",
                f"{r.tok_s:.0f}",
                f"{r.p50_s * 1000:.0f}",
                f"{r.p95_s * 1000:.0f}",
                f"{r.retries} / {r.errors}",
            ]
        )
    return markdown_table(headers, body)
