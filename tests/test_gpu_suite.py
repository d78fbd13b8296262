"""The device suite without a device: its steps (dry run), the merge of its output into the
docs, and the engine bench's verdicts.  Bench code runs in subprocesses: bench/ on sys.path
would shadow packages (bench/kernels.py vs the ``kernels`` package transformers looks for)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=f"{ROOT / 'shared'}{os.pathsep}{ROOT}")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_dry_run_lists_the_gpu_steps(tmp_path: Path) -> None:
    proc = _run("bash", "bench/gpu_suite.sh", "--dry-run", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    steps = proc.stdout.splitlines()
    parsed = [re.match(r"\[(.+), (\d+)s -> ", s) for s in steps]
    assert [m.group(1) for m in parsed if m] == [
        "pytest -m gpu, warm-up",
        "pytest -m gpu, the rest",
        "engine bench",
        "kernels --quick",
        "kernel test grid",
    ]
    assert "-m gpu tests/kernels/test_warmup_gpu.py" in steps[0]
    assert "-m gpu" in steps[1] and steps[1].endswith("tests/kernels")
    assert "bench/engine_gpu.py --device cuda --dtype bfloat16" in steps[2]
    assert "bench/kernels.py --quick" in steps[3] and "--md" in steps[3]
    assert all(str(tmp_path) in s for s in steps)
    budgets = sum(int(m.group(2)) for m in parsed if m)
    assert budgets <= 9 * 60  # one device call of at most ~9 minutes
    assert "- Mode: gpu (dry run)" in (tmp_path / "suite.md").read_text()


def test_no_output_folder_is_an_error() -> None:
    proc = subprocess.run(
        ["bash", "bench/gpu_suite.sh"],
        cwd=ROOT,
        env={k: v for k, v in ENV.items() if k != "OUT"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_source_tree_imports_every_mapped_package_without_an_install(tmp_path: Path) -> None:
    """The device's python has no install of loraplex: the suite imports it from the tree that
    bench/src_tree.py lays out, which must hold every package pyproject maps (tests/conftest.py
    imports loraplex.tooling, which PYTHONPATH=shared alone cannot find)."""
    proc = _run(sys.executable, "bench/src_tree.py", str(tmp_path / "src"))
    assert proc.returncode == 0, proc.stderr
    tree = proc.stdout.strip()
    assert tree == str((tmp_path / "src").resolve())
    modules = [
        "loraplex.tooling.servers",
        "loraplex.worker.runtime",
        "loraplex.gateway.app",
        "loraplex.scheduler.service",
        "loraplex.adapter_store.app",
        "loraplex.kernels.dispatch",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    print(importlib.util.find_spec(name).origin)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{ROOT}")
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    origins = found.stdout.split()
    assert len(origins) == len(modules)
    assert all(origin.startswith(tree) for origin in origins), origins
    # Rebuilding replaces the tree (a second suite run on the same machine).
    again = _run(sys.executable, "bench/src_tree.py", tree)
    assert again.returncode == 0, again.stderr


SUITE = """# GPU suite (gpu)

- Date: 2031-02-03 (10:00 UTC)
- Device: NVIDIA H200, 143771 MiB, 580.159.04
- Software: Python 3.12.3, torch 2.11.0, triton 3.6.0
- Mode: gpu

| step | exit code | seconds | budget s |
| --- | ---: | ---: | ---: |
| pytest -m gpu | 1 | 140 | 180 |
| engine bench | 124 (time-out) | 200 | 200 |
"""
PYTEST_GPU = """..F.
FAILED tests/kernels/test_warmup_gpu.py::test_x - assert 3 <= 1
=========== 1 failed, 9 passed, 378 deselected in 39.20s ===========
.....
=========== 35 passed, 353 deselected in 100.00s (0:01:40) ===========
"""


def _suite_folder(root: Path, mode: str = "gpu") -> Path:
    out = root / "out"
    out.mkdir()
    (out / "suite.md").write_text(SUITE.replace("- Mode: gpu", f"- Mode: {mode}"))
    (out / "pytest-gpu.txt").write_text(PYTEST_GPU)
    (out / "pytest-grid.txt").write_text("....\n")  # cut off: no summary
    (out / "engine.md").write_text("## Engine on the GPU (bench/engine_gpu.py)\n\n| run | 1 |\n")
    (out / "kernels.md").write_text("## Kernels on the GPU (bench/kernels.py)\n\nK-BODY\n")
    return out


def test_merge_puts_every_table_into_the_docs_with_device_and_date(tmp_path: Path) -> None:
    out = _suite_folder(tmp_path)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Kept section\n\nkept\n")
    for _ in range(2):  # merging twice replaces, never duplicates
        proc = _run(sys.executable, "bench/merge_gpu_suite.py", str(out), "--docs", str(docs))
        assert proc.returncode == 0, proc.stderr
    text = docs.read_text()
    assert text.count("## GPU suite runs (bench/gpu_suite.sh)") == 1
    assert "## Kept section\n\nkept" in text
    assert "- Device: NVIDIA H200, 143771 MiB" in text and "- Date: 2031-02-03" in text
    assert "| engine bench | 124 (time-out) | 200 | 200 |" in text
    assert (
        "- `pytest -m gpu`: 1 failed, 9 passed, 378 deselected in 39.20s + 35 passed, 353 "
        "deselected in 100.00s (0:01:40)" in text
    )
    assert "`FAILED tests/kernels/test_warmup_gpu.py::test_x - assert 3 <= 1`" in text
    assert "- kernel test grid: no summary line (cut off?)" in text
    assert "## Engine on the GPU (bench/engine_gpu.py)\n\n| run | 1 |" in text
    assert "## Kernels on the GPU (bench/kernels.py)\n\nK-BODY" in text


def test_merge_refuses_smoke_runs(tmp_path: Path) -> None:
    out = _suite_folder(tmp_path, mode="smoke")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    proc = _run(sys.executable, "bench/merge_gpu_suite.py", str(out), "--docs", str(docs))
    assert proc.returncode == 2 and "not GPU measurements" in proc.stderr
    assert docs.read_text() == "# Benchmarks\n"


VERDICTS = """
import json, sys
sys.path.insert(0, "bench")
from enginebench.gpu_report import agreement, target_lines
from enginebench.gpu_runs import Run
runs = [
    Run("loraplex", "graphs", "base", 10, 2.0, 1.0, 0.1, [[1, 2, 3], [4, 5, 6]]),
    Run("loraplex", "graphs", "1 adapter", 10, 3.0, 1.1, 0.1, []),
    Run("loraplex", "graphs", "32 distinct", 10, 1.3, 1.2, 0.1, []),
    Run("loraplex", "eager", "32 distinct", 10, 3.6, 3.6, 0.3, []),
]
print(json.dumps({"lines": target_lines(runs, 64), "agree": agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]])}))
"""


def test_engine_bench_verdicts() -> None:
    proc = _run(sys.executable, "-c", VERDICTS)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    lines = got["lines"]
    assert (
        lines[0].startswith("- 32 distinct adapters >= 0.85x base") and "0.83x, MISSED" in lines[0]
    )
    # The first run of "1 adapter" (3.0 s: a compile on first use) is slower than 32 distinct.
    assert "MISSED: base (first run) 320, 1 adapter (first run) 213" in lines[1]
    assert "CUDA graphs vs eager, 32 distinct: 3.00x" in lines[2]
    assert got["agree"] == [50.0, 2.5]
