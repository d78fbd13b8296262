"""The benches that load a live stack still run, at a tiny size (see ``run.py``)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_smoke.run import run_bench


def test_reliability_bench_sends_hostile_inputs() -> None:
    out = run_bench("bench/reliability.py", "--skip-kills", "--fuzz-scale", "0.01")
    assert "| hostile cases (tests/hostile/case_table.py) |" in out, out
    assert "| fuzz run (tests/hostile/fuzz.py, derandomized) |" in out, out
    assert "| worker killed |" not in out, out


def test_memory_bench_samples_every_service_under_mixed_traffic() -> None:
    out = run_bench(
        "bench/memory.py", "--seconds", "4", "--warmup-s", "2", "--sample-s", "1", "--rate", "3"
    )
    services = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert {"gateway", "scheduler", "prefill-0", "decode-0", "adapter-store"} <= services, out
    assert "**Every check passed.**" in out, out  # every kind ended as it should, gauges 0


def test_serve_bench_loads_a_disaggregated_stack_and_hands_kv_over() -> None:
    out = run_bench(
        "bench/serve.py", "--configs", "disagg", "--rate", "2", "--duration", "2",
        "--prompt-len", "8", "--output-len", "4", "--tenants", "2", "--kv-lengths", "16",
        "--kv-reps", "1", "--raw-mb", "1", "--dtype", "float32", "--device", "cpu",
    )  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("| 2 | disagg"))
    assert row.split("|")[4].strip() == "0", out  # no request failed
    assert "| Llama-3-8B K/V geometry, bf16 | 16 |" in out, out


def test_fairness_bench_live_replays_a_workload_on_a_stack(tmp_path: Path) -> None:
    # --capacity: a calibration short enough for a smoke run can measure 0 req/s on a busy box.
    out = run_bench(
        "bench/fairness.py", "--mode", "live", "--workloads", "overload", "--policies", "vtc",
        "--capacity", "4", "--duration-s", "2", "--length-scale", "0.05",
        "--img-dir", str(tmp_path),
    )  # fmt: skip
    assert "| overload | VTC |" in out, out
    assert "1 live runs in" in out, out
    assert (tmp_path / "fairness_live_overload.png").is_file(), out
