"""The serving benches (adapters, prefix caching, acknowledged delivery, the scheduler) still
run, at a tiny size (see ``run.py``)."""

from __future__ import annotations

from tests.bench_smoke.run import run_bench


def test_adapter_bench_serves_a_small_catalogue_from_redis_and_from_disk() -> None:
    out = run_bench(
        "bench/adapters.py", "--skip-cold", "--catalog", "20", "--requests", "24",
        "--warmup", "4", "--alphas", "1.0", "--concurrency", "4",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2, out
    assert all(row.rstrip().endswith("| 0 / 0 |") for row in rows), out  # nothing failed


def test_prefix_bench_offline_and_on_a_two_worker_stack() -> None:
    out = run_bench(
        "bench/prefix.py", "--mode", "both", "--adapters", "2", "--waves", "2", "--per-wave", "2",
        "--prefix-len", "32", "--suffix-len", "4", "--output-len", "2", "--hidden", "64",
        "--layers", "1", "--repeats", "1", "--live-prefixes", "3", "--live-prefix-len", "32",
        "--live-requests", "6", "--live-concurrency", "2",
    )  # fmt: skip
    assert "| loraplex, prefix caching off (peer) |" in out, out
    assert "| cache-aware placement (--prefix-routing) |" in out, out
    assert "| load only (peer) |" in out, out


def test_acknowledged_bench_runs_all_three_ways() -> None:
    out = run_bench("bench/acknowledged.py", "--rounds", "1", "--seconds", "1")
    rows = [line for line in out.splitlines() if line.startswith(("| both", "| last messages"))]
    assert len(rows) == 3 and all(row.rstrip().endswith("| 0 |") for row in rows), out


def test_scheduler_bench_decides_on_a_small_cluster() -> None:
    # --quick: the small grid and one long-prompt row (not the 1,000 x 10,000 cells).
    out = run_bench("bench/scheduler.py", "--quick", "--no-live", "--no-redis", "--no-fairness")
    assert "100 workers    1000 tenants   128-token prompts" in out, out
    assert "100 workers     100 tenants   512-token prompts" in out, out
