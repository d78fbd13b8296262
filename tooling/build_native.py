"""Compile the scheduler's hot modules with mypyc: ``python -m loraplex.tooling.build_native``.

The sources stay as they are; their compiled twins go to ``loraplex/_native/`` with a manifest
of the sources' hashes (``loraplex/native.py`` loads them only while every hash still matches).
Needs ``mypy`` (the ``native`` extra) and a C compiler.  ``make setup`` runs it when both are
there; without them everything runs interpreted, only slower (``docs/benchmarks.md``).
``--clean`` removes the build.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loraplex import native

# The decision path, compiled together (calls between them stay native).  Subclasses compile with
# their bases: an interpreted class cannot inherit from a compiled one.
COMPILED = (
    "worker_state",
    "worker_index",
    "placement",
    "prefix_affinity",
    "workers",
    "policies.base",
    "policies.backlog_heap",
    "policies.vtc",
    "policies.fcfs",
    "policies.lcf",
    "policies.rpm",
    "policies.linear",
)
# What they import from the rest of loraplex: type-checked for their signatures, not compiled.
SUPPORT = ("protocol", "prefix_keys", "kvcache/block_allocator")
GROUP = native.ROOT_PACKAGE + "._native"  # the shared library: loraplex.scheduler._native__mypyc


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"cannot find the package {name}")
    return Path(list(spec.submodule_search_locations)[-1]).resolve()


def _stage(src: Path) -> tuple[list[str], dict[str, str]]:
    """Copy the sources into ``src/loraplex/...``; returns the paths to compile and their
    modules' hashes."""
    scheduler, shared = _package_dir(native.ROOT_PACKAGE), _package_dir("loraplex")
    for pkg in (
        "loraplex",
        "loraplex/scheduler",
        "loraplex/scheduler/policies",
        "loraplex/kvcache",
    ):
        (src / pkg).mkdir(parents=True, exist_ok=True)
        (src / pkg / "__init__.py").write_text("")
    for rel in SUPPORT:
        shutil.copyfile(shared / f"{rel}.py", src / "loraplex" / f"{rel}.py")
    paths, hashes = [], {}
    for rel in COMPILED:
        origin = scheduler / (rel.replace(".", "/") + ".py")
        target = src / "loraplex" / "scheduler" / (rel.replace(".", "/") + ".py")
        shutil.copyfile(origin, target)
        paths.append(str(target.relative_to(src)))
        hashes[f"{native.ROOT_PACKAGE}.{rel}"] = native.sha256_of(origin)
    return paths, hashes


def build(out: Path = native.NATIVE_DIR, jobs: int | None = None, quiet: bool = False) -> dict:
    """Compile into ``out`` (replaced whole, the manifest written last); returns the manifest."""
    os.environ["LORAPLEX_NATIVE"] = "off"  # stage the sources, never an older build
    try:  # imported late: only this tool needs them
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as e:
        raise SystemExit(f"cannot compile: {e} (pip install -e '.[native]')") from None

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraplex-native-") as tmp:
        work = Path(tmp)
        src = work / "src"
        paths, hashes = _stage(src)
        cwd = os.getcwd()
        os.chdir(src)  # mypyc names modules by their paths from here
        try:
            extensions = mypycify(
                [*paths, "--ignore-missing-imports", "--follow-imports=silent"],
                group_name=GROUP,
                opt_level="3",
                target_dir=str(work / "c"),
            )
            dist = Distribution({"name": "loraplex-native", "ext_modules": extensions})
            dist.verbose = not quiet  # type: ignore[attr-defined]  # the compiler's command lines
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(work / "lib")  # type: ignore[attr-defined]
            cmd.build_temp = str(work / "obj")  # type: ignore[attr-defined]
            cmd.parallel = jobs or os.cpu_count() or 1  # type: ignore[attr-defined]
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        manifest = {
            "root": native.ROOT_PACKAGE,
            "ext_suffix": native.ext_suffix(),
            "python": sys.version.split()[0],
            "modules": hashes,
            "seconds": round(time.perf_counter() - started, 1),
        }
        lib = work / "lib"
        (lib / native.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        # Swapped in by renames: a process starting meanwhile sees the old build, none, or the
        # new one, never half of one.
        fresh, old = out.with_name(out.name + ".new"), out.with_name(out.name + ".old")
        for stale in (fresh, old):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(lib, fresh)
        if out.exists():
            out.rename(old)
        fresh.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", action="store_true", help="remove the compiled build")
    p.add_argument("--jobs", type=int, default=None, help="C compiler processes (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no compiler command lines")
    args = p.parse_args(argv)
    if args.clean:
        shutil.rmtree(native.NATIVE_DIR, ignore_errors=True)
        print(f"removed {native.NATIVE_DIR}")
        return 0
    try:
        manifest = build(jobs=args.jobs, quiet=args.quiet)
    except Exception as e:  # a missing compiler or headers: say so in one line, keep the old build
        print(f"the compiled core was not built: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(
        f"compiled {len(manifest['modules'])} scheduler modules into {native.NATIVE_DIR} "
        f"in {manifest['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
