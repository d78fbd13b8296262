"""The benches still run: each, at a tiny size, against the code as it is now.

A bench is only run by hand (its figures go to docs/benchmarks.md), so an API change can break one
unnoticed: the adapter bench fetched adapters by bare name for weeks after ids became
``owner/name``.  These runs check that they finish and report, not what they measure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_adapter_bench_serves_a_small_catalogue_from_redis_and_from_disk() -> None:
    out = _run(
        "bench/adapters.py", "--skip-cold", "--catalog", "20", "--requests", "24",
        "--warmup", "4", "--alphas", "1.0", "--concurrency", "4",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2, out
    assert all(row.rstrip().endswith("| 0 / 0 |") for row in rows), out  # nothing failed


def test_scheduler_bench_decides_on_a_small_cluster() -> None:
    out = _run(
        "bench/scheduler.py", "--workers", "20", "--tenants", "50", "--fast-seconds", "0.2",
        "--linear-seconds", "0.2", "--no-live", "--no-redis", "--no-fairness",
    )  # fmt: skip
    assert "20 workers      50 tenants" in out, out
