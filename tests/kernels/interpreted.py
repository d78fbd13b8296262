"""Run a test body on the Triton interpreter whatever the host has.

``TRITON_INTERPRET`` is read when a kernel module is imported.  On a host without CUDA the
kernel conftest sets it first, so the kernels already run in the interpreter and the body runs
in this process.  On a CUDA host the kernels were compiled for the GPU at import, so the body
runs in a fresh Python process with the interpreter on and the GPU hidden.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kernels_interpreted() -> bool:
    from loraplex.kernels.triton_lora_kernels import INTERPRETED

    return INTERPRETED


def run_interpreted(
    body: Callable[[Path], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_process: bool | None = None,
) -> None:
    """``body(tmp_path)`` with the Triton kernels interpreted on CPU and the engine told to use
    them there (``LORAPLEX_TRITON_ON_CPU``); ``body`` must be a module-level function."""
    monkeypatch.setenv("LORAPLEX_TRITON_ON_CPU", "1")
    monkeypatch.delenv("LORAPLEX_DISABLE_TRITON", raising=False)
    if in_process if in_process is not None else kernels_interpreted():
        body(tmp_path)
        return
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    # The caller's path first: on the device it holds the laid-out source tree (bench/src_tree.py).
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (env.get("PYTHONPATH", ""), str(ROOT), str(ROOT / "shared")) if p]
    )
    call = f"import {body.__module__} as m; from pathlib import Path; m.{body.__name__}(Path({str(tmp_path)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", call], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"interpreted run failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
