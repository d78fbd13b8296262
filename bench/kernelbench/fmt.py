"""Number formatting for the log and the tables."""

from __future__ import annotations

import math


def fmt_us(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    us = seconds * 1e6
    return f"{us:.0f}" if us >= 1000 else f"{us:.1f}"


def fmt_rate(value: float, unit: str) -> str:
    """``value`` in units/s with a G or T prefix, e.g. ``3.02 TB/s`` or ``41.3 GFLOP/s``."""
    if not math.isfinite(value):
        return "—"
    if value >= 1e12:
        return f"{value / 1e12:.2f} T{unit}/s"
    return f"{value / 1e9:.3g} G{unit}/s"


def fmt_num(x: float) -> str:
    """A rate for a table cell: no decimals when large, three significant digits when small."""
    return "—" if not math.isfinite(x) else f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_x(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "—"


def err_flag(errors: dict[str, float], tol: float) -> str:
    bad = [k for k, e in errors.items() if not (e <= tol)]
    worst = max((e for e in errors.values() if math.isfinite(e)), default=math.nan)
    return f"{worst:.0e}" + (f" FAIL: {', '.join(bad)}" if bad else "")
