"""Put what ``bench/gpu_suite.sh`` wrote into docs/benchmarks.md, with its device and date.

    .venv/bin/python bench/merge_gpu_suite.py DIR [--docs docs/benchmarks.md]

Sections replaced (each only if its file is in DIR):

* "GPU suite runs (bench/gpu_suite.sh)": device, date, software, every step's exit code and
  time, the pytest summary lines and failed tests (``suite.md``, ``pytest-*.txt``);
* "Engine on the GPU (bench/engine_gpu.py)" (``engine.md``);
* "Kernels on the GPU (bench/kernels.py)" (``kernels.md``).

A smoke run (``gpu_suite.sh --smoke``, CPU) is refused unless ``--allow-smoke`` (for tests).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import BENCH_DOC, replace_doc_section  # noqa: E402

SUITE_SECTION = "GPU suite runs (bench/gpu_suite.sh)"
PYTEST_FILES = {"pytest-gpu.txt": "`pytest -m gpu`", "pytest-grid.txt": "kernel test grid"}
SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error|skipped|deselected).*?)\s*=*$")


class MergeError(Exception):
    pass


def pytest_summary(text: str) -> tuple[str, list[str]]:
    """(the "N passed, ..." line of each pytest run in ``text``, joined; the FAILED/ERROR
    lines) of a pytest output."""
    lines = text.splitlines()
    found = [m.group(1) for ln in lines if (m := SUMMARY.match(ln.strip()))]
    failed = [ln.strip() for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    return " + ".join(found) or "no summary line (cut off?)", failed


def section_body(text: str) -> str:
    """A file written with ``## <section>`` on top: the body under that heading."""
    return text.split("\n", 1)[1].strip() if text.startswith("## ") else text.strip()


def suite_body(folder: Path) -> str:
    suite = (folder / "suite.md").read_text()
    head = [ln for ln in suite.splitlines() if ln.startswith("- ")]
    steps = [ln for ln in suite.splitlines() if ln.startswith("|")]
    out = [*head, "", *steps, ""]
    for name, what in PYTEST_FILES.items():
        path = folder / name
        if not path.exists():
            continue
        summary, failed = pytest_summary(path.read_text())
        out.append(f"- {what}: {summary}")
        out += [f"  - `{ln}`" for ln in failed[:20]]
    out.append("")
    out.append(f"Merged from `{folder.name}` by `bench/merge_gpu_suite.py`.")
    return "\n".join(out)


def merge(folder: Path, docs: Path, allow_smoke: bool = False) -> list[str]:
    """Replace the sections of ``docs`` that ``folder`` has files for; returns their titles."""
    suite = folder / "suite.md"
    if not suite.exists():
        raise MergeError(f"{suite} not found: not a gpu_suite.sh output folder")
    text = suite.read_text()
    if "- Mode: gpu" not in text and not allow_smoke:
        raise MergeError("a smoke or dry run of the suite: its numbers are not GPU measurements")
    done = [SUITE_SECTION]
    replace_doc_section(SUITE_SECTION, suite_body(folder), docs)
    engine = folder / "engine.md"
    if engine.exists():
        from enginebench.gpu_report import SECTION as ENGINE_SECTION

        replace_doc_section(ENGINE_SECTION, section_body(engine.read_text()), docs)
        done.append(ENGINE_SECTION)
    kernels = folder / "kernels.md"
    if kernels.exists():
        from kernelbench.config import SECTION as KERNELS_SECTION

        replace_doc_section(KERNELS_SECTION, section_body(kernels.read_text()), docs)
        done.append(KERNELS_SECTION)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the folder gpu_suite.sh wrote ($OUT's copy here)")
    p.add_argument("--docs", type=Path, default=BENCH_DOC)
    p.add_argument("--allow-smoke", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        done = merge(a.folder, a.docs, a.allow_smoke)
    except MergeError as e:
        print(f"merge_gpu_suite: {e}", file=sys.stderr)
        return 2
    print(f"{a.docs}: replaced " + "; ".join(repr(s) for s in done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
