"""bench/batches.py still runs (as test_bench_smoke.py checks the other benches): at a tiny size,
its three phases finish and the batch completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_batches_bench_runs_a_batch_and_a_burst_beside_probes() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/batches.py", "--lines", "6", "--probes", "2", "--max-tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == [
        "alone",
        "beside a batch",
        "beside a burst",
    ]
