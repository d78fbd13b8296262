"""The offline benches (engine, kernels, chunked prefill, structured outputs, token lists,
fairness simulation) still run, at a tiny size (see ``run.py``)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_smoke.run import run_bench


def test_engine_bench_compares_loraplex_hf_and_the_loop_on_a_tiny_model() -> None:
    out = run_bench(
        "bench/engine.py", "--adapters", "1,2", "--requests", "4", "--prompt-len", "8",
        "--output-len", "4", "--hidden", "64", "--layers", "1",
    )  # fmt: skip
    assert "| adapters | loraplex tok/s | HF+PEFT tok/s |" in out, out
    assert sum(line.startswith("| 2 |") for line in out.splitlines()) == 3, out  # 3 tables


def test_fairness_bench_simulates_every_policy_and_plots(tmp_path: Path) -> None:
    out = run_bench(
        "bench/fairness.py", "--mode", "sim", "--workloads", "overload", "--time-scale", "0.05",
        "--length-scale", "0.1", "--img-dir", str(tmp_path),
    )  # fmt: skip
    assert sum(line.startswith("| overload |") for line in out.splitlines()) == 5, out
    assert (tmp_path / "fairness_overload.png").is_file(), out


def test_chunked_bench_prefills_a_long_prompt_beside_running_requests() -> None:
    out = run_bench(
        "bench/chunked.py", "--running", "2", "--long-prompt", "64", "--budgets", "64,16",
        "--hidden", "64", "--layers", "1",
    )  # fmt: skip
    assert "| 64 (peer: prompt in one step) |" in out, out
    assert "| 16 (chunked, mixed) |" in out, out


def test_structured_bench_decodes_with_and_without_masks() -> None:
    out = run_bench(
        "bench/structured.py", "--batches", "1", "--tokens", "4", "--hidden", "64",
        "--layers", "1", "--repeats", "1",
    )  # fmt: skip
    for constraint in ("none (peer)", "regex [a-z ]{400}", "JSON schema"):
        assert f"| 1 | {constraint} |" in out, out
    assert "- Compile of a 12-object JSON schema" in out, out


def test_token_lists_bench_times_the_floor_and_the_lists() -> None:
    out = run_bench("bench/token_lists.py", "--rows", "2", "--vocab", "4096", "--steps", "1")
    for name in ("no lists (floor)", "largest lists, as served", "largest lists, rebuilt"):
        assert f"| {name}" in out, out


def test_kernel_bench_smoke_mode_runs_every_section_on_cpu(tmp_path: Path) -> None:
    md, js = tmp_path / "kernels.md", tmp_path / "kernels.json"
    out = run_bench("bench/kernels.py", "--smoke", "--md", str(md), "--json", str(js))
    assert out.startswith("**CPU SMOKE RUN"), out
    assert "| batch x context | kernel µs |" in out, out  # the last section: paged decode
    assert md.read_text().strip() and js.read_text().strip()


def test_engine_gpu_bench_runs_its_documented_cpu_smoke(tmp_path: Path) -> None:
    md, js = tmp_path / "engine.md", tmp_path / "engine.json"
    out = run_bench(
        "bench/engine_gpu.py", "--device", "cpu", "--dtype", "float32", "--shape", "tiny",
        "--layers", "2", "--requests", "8", "--prompt-len", "16", "--output-len", "4",
        "--adapters", "4", "--warmup", "light", "--md", str(md), "--json", str(js),
    )  # fmt: skip
    assert "| loraplex eager, 4 distinct |" in out, out
    assert "| HF+PEFT, 4 distinct |" in out, out
    assert md.read_text().strip() and js.read_text().strip()


def test_slots_bench_compares_both_rules_for_the_requests_behind_a_waiting_one() -> None:
    out = run_bench(
        "bench/slots.py", "--adapters", "3", "--a-requests", "4", "--b-requests", "2",
        "--a-tokens", "6", "--b-tokens", "2",
    )  # fmt: skip
    rows = [r for r in out.splitlines() if r.startswith("| B ")]
    assert len(rows) == 3, out
    assert "Greedy tokens of every request identical under both rules: yes." in out, out


def test_slot_placement_bench_sends_new_adapters_where_a_slot_is_free() -> None:
    out = run_bench(
        "bench/slot_placement.py", "--a-tokens", "24", "--b-requests", "2", "--burst-tokens", "8"
    )
    pinned, burst = out.split("**Burst.**")
    rows = [r.split("|") for r in pinned.splitlines() if r.startswith("| loraplex")]
    assert rows and rows[0][2].strip() == "w1", out  # not w0, whose slots A pins
    rows = [r.split("|") for r in pinned.splitlines() if r.startswith("| the rule before")]
    assert rows and "w0" in rows[0][2], out
    # The burst: three new adapters before a heartbeat, w0 has two slots: loraplex sends the
    # third to w1, the rule before sends all three to w0, where the last waits for a slot.
    rows = [r.split("|") for r in burst.splitlines() if r.startswith("| loraplex")]
    assert rows and rows[0][2].strip() == "w0, w1", out
    ours_max = int(rows[0][4])
    rows = [r.split("|") for r in burst.splitlines() if r.startswith("| the rule before")]
    assert rows and rows[0][2].strip() == "w0", out
    assert int(rows[0][4]) > ours_max, out
    assert "Greedy tokens of every request identical under both rules: yes." in out, out
