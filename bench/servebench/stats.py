"""Serving statistics: percentiles and the per-run summary."""

from __future__ import annotations

import math
import statistics

from .load import ServeResult


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.0f}"


def summarize(res: ServeResult) -> dict[str, float]:
    ok = [r for r in res.records if r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [x for r in ok for x in r.itls]
    tpot = [
        (r.e2e - r.ttft) / (r.tokens - 1)
        for r in ok
        if r.e2e and r.ttft is not None and r.tokens > 1
    ]
    return {
        "sent": len(res.records),
        "ok": len(ok),
        "errors": len(res.records) - len(ok),
        "req_s": len(ok) / res.window_s if res.window_s else float("nan"),
        "tok_s": sum(r.tokens for r in ok) / res.window_s if res.window_s else float("nan"),
        "ttft50": pct(ttft, 50),
        "ttft99": pct(ttft, 99),
        "itl50": pct(itl, 50),
        "itl99": pct(itl, 99),
        "tpot": statistics.fmean(tpot) if tpot else float("nan"),
        "e2e50": pct([r.e2e for r in ok if r.e2e is not None], 50),
    }


def by_rate(results: list[ServeResult]) -> list[ServeResult]:
    """Rows of one offered rate next to each other (configurations in run order within a rate)."""
    return sorted(results, key=lambda r: r.rate)


def one_min(load: str) -> str:
    return load.split(" / ")[0]
