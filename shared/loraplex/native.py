"""Compiled twins of the scheduler's hot modules, used only when built from these very sources.

The scheduler's decision path (fairness policies, placement, prefix affinity, the worker
registry) is plain Python, and it stays the source of truth.  ``python -m
loraplex.tooling.build_native`` compiles those modules, unchanged, with mypyc into ``_native/``
beside this file (one C extension per module and one shared library), and writes a manifest:
the interpreter it was built for and the SHA-256 of every source it compiled.

``loraplex.scheduler`` and ``loraplex.scheduler.policies`` call ``native_dirs`` in their
``__init__``.  When ``LORAPLEX_NATIVE`` is ``auto`` (the default) and the manifest matches this
interpreter and every listed source as it is now, the compiled directory goes first on the
package's ``__path__``, so the extensions are imported instead of the sources.  One edited
source makes the whole build stale: everything then runs interpreted (with a warning) until it is
rebuilt.  All or nothing, so compiled and interpreted classes of one build never mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from loraplex.env import NATIVE

log = logging.getLogger(__name__)

NATIVE_DIR = Path(__file__).resolve().parent / "_native"
MANIFEST = "manifest.json"
ROOT_PACKAGE = "loraplex.scheduler"  # every compiled module is in it or below


@dataclass(frozen=True)
class NativeBuild:
    """A compiled build that matches this interpreter and the sources."""

    root: Path  # holds loraplex/scheduler/... as the package tree
    modules: tuple[str, ...]  # the compiled modules' names


_decided: dict[str, NativeBuild | None] = {}  # root package dir -> the decision, made once


def ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decide(root_dir: Path, native_dir: Path) -> NativeBuild | None:
    mode = NATIVE.get().strip().lower()
    if mode == "off":
        return None
    if mode != "auto":
        log.warning("LORAPLEX_NATIVE=%r is neither 'auto' nor 'off': running interpreted", mode)
        return None
    try:
        manifest = json.loads((native_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None  # never built: the usual case on a box without a C compiler
    except (OSError, ValueError) as e:
        log.warning("compiled scheduler ignored: unreadable manifest (%s)", e)
        return None
    if manifest.get("ext_suffix") != ext_suffix() or manifest.get("root") != ROOT_PACKAGE:
        log.warning("compiled scheduler ignored: built for another interpreter; rebuild it")
        return None
    modules: dict[str, str] = manifest.get("modules", {})
    for module, digest in modules.items():
        rel = module.removeprefix(ROOT_PACKAGE + ".").replace(".", "/") + ".py"
        source = root_dir / rel
        if not source.is_file() or sha256_of(source) != digest:
            log.warning(
                "compiled scheduler ignored: %s changed since it was built; run "
                "`python -m loraplex.tooling.build_native` (interpreted until then)",
                module,
            )
            return None
    return NativeBuild(native_dir, tuple(modules))


def native_dirs(package: str, path: list[str], native_dir: Path = NATIVE_DIR) -> list[str]:
    """The directories to put before ``package``'s own on its ``__path__`` (``path``): its
    compiled twin's when a matching build is active, else none.  ``package`` is
    ``ROOT_PACKAGE`` or below it; the root is imported first, and decides for all."""
    if package == ROOT_PACKAGE:
        key = str(Path(path[0]).resolve())
        if key not in _decided:
            _decided[key] = _decide(Path(key), native_dir)
        build = _decided[key]
    else:
        root = sys.modules.get(ROOT_PACKAGE)
        key = str(Path(root.__path__[-1]).resolve()) if root is not None else ""
        build = _decided.get(key)
    if build is None:
        return []
    here = build.root.joinpath(*package.split("."))
    return [str(here)] if here.is_dir() else []


def is_compiled(module: str) -> bool:
    """Whether ``module`` (imported) runs compiled."""
    mod = sys.modules.get(module)
    return bool(mod is not None and str(getattr(mod, "__file__", "")).endswith(ext_suffix()))
