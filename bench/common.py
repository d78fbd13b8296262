"""Shared helpers for the benchmarks in bench/: machine info, markdown tables, docs sections."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BENCH_DOC = REPO_ROOT / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks"
R = TypeVar("R")


def unshadow_packages() -> None:
    """Take bench/ off ``sys.path``: call once a bench has imported its own modules.

    bench/kernels.py would pass for the ``kernels`` package that transformers imports when it is
    installed (Python puts a script's folder first on the path): transformers fails to import.
    """
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]


def num_cores() -> int:
    """CPU cores this process may run on (respects affinity masks / container cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform's best guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line describing where the numbers were taken."""
    return (
        f"{cpu_model()}, {num_cores()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def cpu_stall_us() -> int | None:
    """Total microseconds in which some runnable task waited for a CPU (Linux PSI), if available."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(kv.split("=") for kv in first.split()[1:])
    return int(fields["total"])


def cpu_pressure_avg10() -> float | None:
    """Share (%) of the last ~10 s in which some runnable task waited for a CPU (Linux PSI)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(dict(kv.split("=") for kv in first.split()[1:])["avg10"])


def wait_for_quiet(
    max_pressure: float, timeout_s: float = 120.0, poll_s: float = 2.0
) -> float | None:
    """Sleep until the box's 10-s CPU pressure is below ``max_pressure`` % (or ``timeout_s`` passes).

    Returns the last reading (None without PSI).  Use before a timed run on a shared machine.
    """
    deadline = time.monotonic() + timeout_s
    level = cpu_pressure_avg10()
    while level is not None and level >= max_pressure and time.monotonic() < deadline:
        time.sleep(poll_s)
        level = cpu_pressure_avg10()
    return level


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def today() -> str:
    return dt.date.today().isoformat()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned, first column left-aligned)."""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def replace_doc_section(heading: str, body: str, path: Path = BENCH_DOC) -> None:
    """Put ``## heading`` + ``body`` into ``path``, replacing only that section.

    The section runs from its ``## `` heading to the next ``## `` heading (or the end); other
    sections and the ``# Benchmarks`` title are kept as they are.  Creates the file if needed.
    """
    text = path.read_text() if path.exists() else f"{DOC_TITLE}\n"
    if not text.lstrip().startswith(DOC_TITLE):
        text = f"{DOC_TITLE}\n\n{text}"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def publish(heading: str, body: str, write_docs: bool) -> None:
    """Print a bench's report and, with ``--write-docs``, put it into its docs section."""
    print(body)
    if write_docs:
        replace_doc_section(heading, body)
        print("updated docs/benchmarks.md")


def run_live_bench(
    argv: list[str],
    section: str,
    parse: Callable[[list[str]], argparse.Namespace],
    soak: Callable[[argparse.Namespace, Path], Awaitable[R]],
    render: Callable[[list[str], argparse.Namespace, R, float], tuple[str, bool]],
) -> int:
    """The ``main`` of a bench that runs a live stack: ``soak`` in a temporary directory, then
    ``render`` (the docs section and whether every check passed, given the minutes it took),
    printed and, with ``--write-docs``, put into ``section`` of docs/benchmarks.md.  Exit 1 when
    a check failed."""
    a = parse(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(soak(a, Path(tmp)))
    text, passed = render(argv, a, result, (time.monotonic() - start) / 60)
    print(text)
    if a.write_docs:
        replace_doc_section(section, text)
    return 0 if passed else 1
