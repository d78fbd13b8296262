"""The folder layout is the architecture: these checks keep it so (read from the sources, no import).

* the library (``shared/loraplex``) never imports a service or the tooling;
* services never import each other (the prefill/decode entry points run the worker; the tooling
  starts everything), they meet only through the library's messages;
* the modules' top-level imports form no cycle (an import inside a function is allowed for a
  heavy or optional dependency, never to break a cycle: it is counted here like a top-level one);
* the model and LoRA layers do not import the engine above them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> the package it is installed as (pyproject's package-dir)
PACKAGES = {
    "shared/loraplex": "loraplex",
    "services/gateway": "loraplex.gateway",
    "services/scheduler": "loraplex.scheduler",
    "services/worker": "loraplex.worker",
    "services/prefill": "loraplex.prefill",
    "services/decode": "loraplex.decode",
    "services/adapter-store": "loraplex.adapter_store",
    "tooling": "loraplex.tooling",
}
SERVICES = {p for p in PACKAGES.values() if p != "loraplex"} - {"loraplex.tooling"}
# who may import which service package, besides itself
ALLOWED = {
    "loraplex.prefill": {"loraplex.worker"},
    "loraplex.decode": {"loraplex.worker"},
    "loraplex.tooling": SERVICES,
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _owner(module: str) -> str:
    """The package (service, tooling or the library) a module belongs to."""
    for package in sorted(PACKAGES.values(), key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    raise AssertionError(module)


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every loraplex module ``module`` imports (at any depth of its code), with the line."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in MODULES:
                yield name, node.lineno


def test_the_sources_were_found() -> None:
    assert len(MODULES) > 100
    assert "loraplex.scheduler.placement" in MODULES and "loraplex.gateway.app" in MODULES


def test_the_library_imports_no_service_and_services_not_each_other() -> None:
    wrong = []
    for module in MODULES:
        owner = _owner(module)
        for target, line in _imports(module):
            to = _owner(target)
            if to == owner or to == "loraplex":
                continue
            if to in ALLOWED.get(owner, set()):
                continue
            wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "imports across the layout:\n" + "\n".join(sorted(wrong))


def test_model_and_lora_do_not_import_the_engine() -> None:
    wrong = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
        for m in MODULES
        if m.startswith(("loraplex.model", "loraplex.lora", "loraplex.kernels"))
        for t, line in _imports(m)
        if t.startswith("loraplex.engine")
    ]
    assert not wrong, "\n".join(wrong)


def _edges() -> dict[str, set[str]]:
    # a module importing ``a.b.c`` also runs ``a`` and ``a.b``'s __init__: those are edges too,
    # except a package's own parents (importing a submodule of yourself is not a cycle)
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in _imports(module):
            if target != module and not module.startswith(target + "."):
                edges[module].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (iterative DFS: white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(edges[nxt]))))
                path.append(nxt)
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
