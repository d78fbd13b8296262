"""Markdown tables of a run: serving, per tenant, errors, K/V hand-over."""

from __future__ import annotations

import statistics

from common import markdown_table

from .kv_transfer import KVRow
from .load import TENANT_NAMES, ServeResult
from .stats import by_rate, ms, one_min, pct, summarize


def serve_table(results: list[ServeResult]) -> str:
    headers = [
        "offered req/s",
        "configuration",
        "sent",
        "errors",
        "req/s",
        "output tok/s",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "ITL p50 (ms)",
        "ITL p99 (ms)",
        "TPOT mean (ms)",
        "E2E p50 (ms)",
        "load avg",
    ]
    rows = []
    for res in by_rate(results):
        s = summarize(res)
        rows.append(
            [
                f"{res.rate:g}",
                res.label,
                f"{s['sent']}",
                f"{s['errors']}",
                f"{s['req_s']:.2f}",
                f"{s['tok_s']:.1f}",
                ms(s["ttft50"]),
                ms(s["ttft99"]),
                ms(s["itl50"]),
                ms(s["itl99"]),
                ms(s["tpot"]),
                ms(s["e2e50"]),
                f"{one_min(res.load_before)} -> {one_min(res.load_after)}",
            ]
        )
    return markdown_table(headers, rows)


def tenant_table(results: list[ServeResult], tenants: int) -> str:
    """TTFT p50 per tenant and configuration (the fairness policy shares the workers among them)."""
    headers = [
        "offered req/s",
        "configuration",
        *[f"{TENANT_NAMES[i]}: n / TTFT p50 (ms)" for i in range(tenants)],
    ]
    rows = []
    for res in by_rate(results):
        cells = [f"{res.rate:g}", res.label]
        for i in range(tenants):
            mine = [
                r for r in res.records if r.tenant == i and r.error is None and r.ttft is not None
            ]
            cells.append(f"{len(mine)} / {ms(pct([r.ttft for r in mine], 50))}")
        rows.append(cells)
    return markdown_table(headers, rows)


def error_lines(results: list[ServeResult]) -> list[str]:
    lines = []
    for res in results:
        errs: dict[str, int] = {}
        for r in res.records:
            if r.error:
                errs[r.error] = errs.get(r.error, 0) + 1
        for msg, n in sorted(errs.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"- {res.label} at {res.rate:g} req/s: {n} x `{msg}`")
    return lines


def kv_table(rows: list[KVRow]) -> str:
    headers = [
        "K/V of",
        "prompt tokens",
        "payload (MB)",
        "chunks",
        "hand-over p50 (ms)",
        "of which export (ms)",
        "hand-over MB/s",
        "sender-side MB/s",
        "raw NATS MB/s (same bytes)",
        "K/V / raw",
    ]
    out = []
    for r in rows:
        kv, send, export, raw = (
            statistics.median(x) for x in (r.kv_s, r.send_s, r.export_s, r.raw_s)
        )
        mb = r.bytes / 1e6
        out.append(
            [
                r.model,
                f"{r.tokens}",
                f"{mb:.2f}",
                f"{r.chunks}",
                f"{kv * 1000:.1f}",
                f"{export * 1000:.1f}",
                f"{mb / kv:.0f}",
                f"{mb / send:.0f}",
                f"{mb / raw:.0f}",
                f"{raw / kv:.2f}",
            ]
        )
    return markdown_table(headers, out)
