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
    # --quick: the small grid and one long-prompt row (not the 1,000 x 10,000 cells).
    out = _run("bench/scheduler.py", "--quick", "--no-live", "--no-redis", "--no-fairness")
    assert "100 workers    1000 tenants   128-token prompts" in out, out
    assert "100 workers     100 tenants   512-token prompts" in out, out


def test_acknowledged_bench_runs_all_three_ways() -> None:
    out = _run("bench/acknowledged.py", "--rounds", "1", "--seconds", "1")
    rows = [line for line in out.splitlines() if line.startswith(("| both", "| last messages"))]
    assert len(rows) == 3 and all(row.rstrip().endswith("| 0 |") for row in rows), out


def test_engine_bench_compares_loraplex_hf_and_the_loop_on_a_tiny_model() -> None:
    out = _run(
        "bench/engine.py", "--adapters", "1,2", "--requests", "4", "--prompt-len", "8",
        "--output-len", "4", "--hidden", "64", "--layers", "1",
    )  # fmt: skip
    assert "| adapters | loraplex tok/s | HF+PEFT tok/s |" in out, out
    assert sum(line.startswith("| 2 |") for line in out.splitlines()) == 3, out  # 3 tables


def test_fairness_bench_simulates_every_policy_and_plots(tmp_path: Path) -> None:
    out = _run(
        "bench/fairness.py", "--mode", "sim", "--workloads", "overload", "--time-scale", "0.05",
        "--length-scale", "0.1", "--img-dir", str(tmp_path),
    )  # fmt: skip
    assert sum(line.startswith("| overload |") for line in out.splitlines()) == 5, out
    assert (tmp_path / "fairness_overload.png").is_file(), out


def test_fairness_bench_live_replays_a_workload_on_a_stack(tmp_path: Path) -> None:
    # --capacity: a calibration short enough for a smoke run can measure 0 req/s on a busy box.
    out = _run(
        "bench/fairness.py", "--mode", "live", "--workloads", "overload", "--policies", "vtc",
        "--capacity", "4", "--duration-s", "2", "--length-scale", "0.05",
        "--img-dir", str(tmp_path),
    )  # fmt: skip
    assert "| overload | VTC |" in out, out
    assert "1 live runs in" in out, out
    assert (tmp_path / "fairness_live_overload.png").is_file(), out


def test_prefix_bench_offline_and_on_a_two_worker_stack() -> None:
    out = _run(
        "bench/prefix.py", "--mode", "both", "--adapters", "2", "--waves", "2", "--per-wave", "2",
        "--prefix-len", "32", "--suffix-len", "4", "--output-len", "2", "--hidden", "64",
        "--layers", "1", "--repeats", "1", "--live-prefixes", "3", "--live-prefix-len", "32",
        "--live-requests", "6", "--live-concurrency", "2",
    )  # fmt: skip
    assert "| loraplex, prefix caching off (peer) |" in out, out
    assert "| cache-aware placement (--prefix-routing) |" in out, out
    assert "| load only (peer) |" in out, out


def test_chunked_bench_prefills_a_long_prompt_beside_running_requests() -> None:
    out = _run(
        "bench/chunked.py", "--running", "2", "--long-prompt", "64", "--budgets", "64,16",
        "--hidden", "64", "--layers", "1",
    )  # fmt: skip
    assert "| 64 (peer: prompt in one step) |" in out, out
    assert "| 16 (chunked, mixed) |" in out, out


def test_serve_bench_loads_a_disaggregated_stack_and_hands_kv_over() -> None:
    out = _run(
        "bench/serve.py", "--configs", "disagg", "--rate", "2", "--duration", "2",
        "--prompt-len", "8", "--output-len", "4", "--tenants", "2", "--kv-lengths", "16",
        "--kv-reps", "1", "--raw-mb", "1", "--dtype", "float32", "--device", "cpu",
    )  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("| 2 | disagg"))
    assert row.split("|")[4].strip() == "0", out  # no request failed
    assert "| Llama-3-8B K/V geometry, bf16 | 16 |" in out, out


def test_structured_bench_decodes_with_and_without_masks() -> None:
    out = _run(
        "bench/structured.py", "--batches", "1", "--tokens", "4", "--hidden", "64",
        "--layers", "1", "--repeats", "1",
    )  # fmt: skip
    for constraint in ("none (peer)", "regex [a-z ]{400}", "JSON schema"):
        assert f"| 1 | {constraint} |" in out, out
    assert "- Compile of a 12-object JSON schema" in out, out


def test_token_lists_bench_times_the_floor_and_the_lists() -> None:
    out = _run("bench/token_lists.py", "--rows", "2", "--vocab", "4096", "--steps", "1")
    for name in ("no lists (floor)", "largest lists, as served", "largest lists, rebuilt"):
        assert f"| {name}" in out, out


def test_failover_bench_kills_a_scheduler_a_worker_and_a_nats_node() -> None:
    out = _run(
        "bench/failover.py", "--phase-s", "1.5", "--max-tokens", "48", "--rate-a", "4",
        "--rate-b", "1",
    )  # fmt: skip
    for event in ("none (baseline)", "scheduler (leader)", "decode worker", "NATS node"):
        assert f"| {event}" in out, out
    assert "Failed requests over all kills:" in out, out


def test_reliability_bench_sends_hostile_inputs() -> None:
    out = _run("bench/reliability.py", "--skip-kills", "--fuzz-scale", "0.01")
    assert "| hostile cases (tests/hostile/case_table.py) |" in out, out
    assert "| fuzz run (tests/hostile/fuzz.py, derandomized) |" in out, out
    assert "| worker killed |" not in out, out


def test_reliability_bench_kills_workers_mid_stream() -> None:
    out = _run(
        "bench/reliability.py", "--skip-inputs", "--trials", "1", "--streams", "2",
        "--max-tokens", "8", "--hang-s", "10",
    )  # fmt: skip
    assert "| decode | 1 | 2 |" in out, out
    assert "| prefill | 1 | 2 |" in out, out
    assert "| hostile cases" not in out, out


def test_kernel_bench_smoke_mode_runs_every_section_on_cpu(tmp_path: Path) -> None:
    md, js = tmp_path / "kernels.md", tmp_path / "kernels.json"
    out = _run("bench/kernels.py", "--smoke", "--md", str(md), "--json", str(js))
    assert out.startswith("**CPU SMOKE RUN"), out
    assert "| batch x context | kernel µs |" in out, out  # the last section: paged decode
    assert md.read_text().strip() and js.read_text().strip()


def test_engine_gpu_bench_runs_its_documented_cpu_smoke(tmp_path: Path) -> None:
    md, js = tmp_path / "engine.md", tmp_path / "engine.json"
    out = _run(
        "bench/engine_gpu.py", "--device", "cpu", "--dtype", "float32", "--shape", "tiny",
        "--layers", "2", "--requests", "8", "--prompt-len", "16", "--output-len", "4",
        "--adapters", "4", "--warmup", "light", "--md", str(md), "--json", str(js),
    )  # fmt: skip
    assert "| loraplex eager, 4 distinct |" in out, out
    assert "| HF+PEFT, 4 distinct |" in out, out
    assert md.read_text().strip() and js.read_text().strip()


def test_chaos_bench_kills_at_random_and_the_stack_heals() -> None:
    out = _run("bench/chaos.py", "--seconds", "20", "--gap-s", "5", "--final", "2")
    total = next(line for line in out.splitlines() if line.startswith("| **total** |"))
    cells = [c.strip() for c in total.strip("|").split("|")]
    assert int(cells[1]) > 0 and cells[5:7] == ["0", "0"], out  # none truncated, none hung
    assert "**Every check passed.**" in out, out
    assert "| final batch (4 requests) | 4 completed with the reference text |" in out, out


def test_memory_bench_samples_every_service_under_mixed_traffic() -> None:
    out = _run(
        "bench/memory.py", "--seconds", "4", "--warmup-s", "2", "--sample-s", "1", "--rate", "3"
    )
    services = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert {"gateway", "scheduler", "prefill-0", "decode-0", "adapter-store"} <= services, out
    assert "**Every check passed.**" in out, out  # every kind ended as it should, gauges 0
