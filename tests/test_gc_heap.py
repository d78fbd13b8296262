"""Start-up objects are frozen out of the garbage collector's full collections, in every
service that serves requests (a full collection stalls a worker's batch for as long as it
walks)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_freezing_takes_the_startup_heap_out_of_full_collections() -> None:
    code = (
        "import gc, json\n"
        "import loraplex.scheduler.service\n"
        "held = [[i] for i in range(50_000)]  # start-up state: containers that live on\n"
        "gc.collect(); before = len(gc.get_objects())\n"
        "from loraplex.gc_heap import freeze_startup_heap\n"
        "frozen = freeze_startup_heap()\n"
        "after = len(gc.get_objects())\n"
        "late = [[i] for i in range(1000)]  # allocated while serving: still collected\n"
        "print(json.dumps([before, frozen, after, gc.is_tracked(late[0])]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, after, late_tracked = __import__("json").loads(out.stdout)
    assert before > 50_000 and frozen >= before - 10
    assert after < 1_000  # what a full collection still walks
    assert late_tracked


def _calls(path: Path, function: str) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return {
                n.func.id
                for n in ast.walk(node)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
    raise AssertionError(f"{function} not in {path}")


def test_each_serving_process_freezes_once_started() -> None:
    for path, function in (
        ("services/worker/main.py", "serve"),
        ("services/scheduler/__main__.py", "serve"),
        ("services/gateway/__main__.py", "main"),
    ):
        assert "freeze_startup_heap" in _calls(ROOT / path, function), path
