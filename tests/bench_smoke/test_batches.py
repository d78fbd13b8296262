"""bench/batches.py still runs (see ``run.py``): at a tiny size, its three phases finish and the
batch completes."""

from __future__ import annotations

from tests.bench_smoke.run import run_bench


def test_batches_bench_runs_a_batch_and_a_burst_beside_probes() -> None:
    out = run_bench("bench/batches.py", "--lines", "6", "--probes", "2", "--max-tokens", "4")
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == [
        "alone",
        "beside a batch",
        "beside a burst",
    ]
