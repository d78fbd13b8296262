"""The benches still run: each, at a tiny size, against the code as it is now.

A bench is only run by hand (its figures go to docs/benchmarks.md), so an API change can break one
unnoticed: the adapter bench fetched adapters by bare name for weeks after ids became
``owner/name``.  These runs check that they finish and report, not what they measure.  They are
split into a few files so that parallel test workers (``make test`` runs two) share them out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> str:
    """Run ``python <args>`` at the repository's root; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout
