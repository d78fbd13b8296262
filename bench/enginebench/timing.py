"""One timed run of a system, with the box's CPU pressure during it."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import cpu_stall_us, wait_for_quiet

from .workload import Tokens


@dataclass(frozen=True)
class Timed:
    tokens: Tokens
    seconds: float
    pressure: float | None  # % of the wall time in which some task on the box waited for a CPU


def timed(fn: Callable[[], Tokens], quiet: float = 0.0) -> Timed:
    """Run ``fn`` once; with ``quiet`` > 0 first wait for the box's CPU pressure to drop below it."""
    gc.collect()
    if quiet > 0:
        wait_for_quiet(quiet)
    stall, start = cpu_stall_us(), time.perf_counter()
    tokens = fn()
    seconds = time.perf_counter() - start
    after = cpu_stall_us()
    pressure = None if stall is None or after is None else (after - stall) / 1e4 / seconds
    return Timed(tokens, seconds, pressure)


def fastest(a: Timed | None, b: Timed) -> Timed:
    return b if a is None or b.seconds < a.seconds else a


def fmt_run(t: Timed) -> str:
    stall = "" if t.pressure is None else f" (cpu pressure {t.pressure:.0f}%)"
    return f"{t.seconds:.2f}s{stall}"
