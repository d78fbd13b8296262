"""The benches that kill services (chaos, reliability kills, failover) still run, at a tiny size
(see ``run.py``)."""

from __future__ import annotations

from tests.bench_smoke.run import run_bench


def test_chaos_bench_kills_at_random_and_the_stack_heals() -> None:
    out = run_bench("bench/chaos.py", "--seconds", "20", "--gap-s", "5", "--final", "2")
    total = next(line for line in out.splitlines() if line.startswith("| **total** |"))
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert int(cells[1]) > 0 and cells[5:7] == ["0", "0"], out  # none truncated, none hung
    assert "**Every check passed.**" in out, out
    assert "| final batch (4 requests) | 4 completed with the reference text |" in out, out


def test_reliability_bench_kills_workers_mid_stream() -> None:
    out = run_bench(
        "bench/reliability.py", "--skip-inputs", "--trials", "1", "--streams", "2",
        "--max-tokens", "8", "--hang-s", "10",
    )  # fmt: skip
    assert "| decode | 1 | 2 |" in out, out
    assert "| prefill | 1 | 2 |" in out, out
    assert "| hostile cases" not in out, out


def test_failover_bench_kills_a_scheduler_a_worker_and_a_nats_node() -> None:
    out = run_bench(
        "bench/failover.py", "--phase-s", "1.5", "--max-tokens", "48", "--rate-a", "4",
        "--rate-b", "1",
    )  # fmt: skip
    for event in ("none (baseline)", "scheduler (leader)", "decode worker", "NATS node"):
        assert f"| {event}" in out, out
    assert "Failed requests over all kills:" in out, out


def test_restart_bench_times_forked_and_execd_restarts_on_one_stack() -> None:
    out = run_bench("bench/restart.py", "--kills", "1")
    rows = [r.split("|") for r in out.splitlines() if r.startswith("| ") and "kills" not in r]
    rows = [r for r in rows if not r[1].strip().startswith("---")]
    ways = {(r[1].strip(), r[2].strip()) for r in rows}
    assert ways == {
        (w, s)
        for w in ("prefill", "decode")
        for s in ("forked (default)", "exec'd (LORAPLEX_FORK_SERVER=0)")
    }, out
