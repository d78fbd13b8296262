"""The scheduler's compiled core (``loraplex/native.py``, ``tooling/build_native.py``).

* The loader uses a build only when it matches the interpreter and every source, else none.
* Compiled, the scheduler decides exactly as interpreted: a seeded replay through every compiled
  module (``native_replay.py``) gives the same decisions and state both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex import native
from loraplex.tooling import build_native

REPLAY = Path(__file__).with_name("native_replay.py")


def _fake_build(tmp_path: Path, sources: dict[str, str]) -> tuple[Path, Path]:
    """A package tree of ``sources`` (path under the root package -> text), and a build of it."""
    root, built = tmp_path / "src", tmp_path / "native"
    modules = {}
    for rel, text in sources.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        name = native.ROOT_PACKAGE + "." + rel.removesuffix(".py").replace("/", ".")
        modules[name] = native.sha256_of(root / rel)
    (built / "loraplex" / "scheduler" / "policies").mkdir(parents=True)
    manifest = {"root": native.ROOT_PACKAGE, "ext_suffix": native.ext_suffix(), "modules": modules}
    (built / native.MANIFEST).write_text(json.dumps(manifest))
    return root, built


SOURCES = {"placement.py": "X = 1\n", "policies/vtc.py": "Y = 2\n"}


def test_a_build_of_these_sources_is_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLEX_NATIVE", "auto")
    root, built = _fake_build(tmp_path, SOURCES)
    got = native.native_dirs(native.ROOT_PACKAGE, [str(root)], built)
    assert got == [str(built / "loraplex" / "scheduler")]


def test_one_edited_source_makes_the_whole_build_stale(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLEX_NATIVE", "auto")
    root, built = _fake_build(tmp_path, SOURCES)
    (root / "policies" / "vtc.py").write_text("Y = 3\n")
    assert native._decide(root, built) is None
    (root / "policies" / "vtc.py").unlink()
    assert native._decide(root, built) is None


def test_no_build_another_interpreter_or_off_runs_interpreted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLEX_NATIVE", "auto")
    root, built = _fake_build(tmp_path, SOURCES)
    assert native._decide(root, built) is not None
    assert native._decide(root, tmp_path / "never-built") is None
    monkeypatch.setenv("LORAPLEX_NATIVE", "off")
    assert native._decide(root, built) is None
    monkeypatch.setenv("LORAPLEX_NATIVE", "auto")
    manifest = json.loads((built / native.MANIFEST).read_text())
    (built / native.MANIFEST).write_text(json.dumps({**manifest, "ext_suffix": ".cpython-20.so"}))
    assert native._decide(root, built) is None
    (built / native.MANIFEST).write_text("{not json")
    assert native._decide(root, built) is None


def test_the_build_compiles_every_module_on_the_decision_path() -> None:
    """What the scheduler imports per decision is in the build (a module left out would run
    interpreted, and a subclass of a compiled class left out cannot load at all)."""
    policies = Path(native.__file__).parents[2] / "services" / "scheduler" / "policies"
    policy_modules = {p.stem for p in policies.glob("*.py")} - {"__init__", "registry"}
    assert {m.removeprefix("policies.") for m in build_native.COMPILED if "." in m} == (
        policy_modules
    )
    for m in ("placement", "prefix_affinity", "workers", "worker_state", "worker_index"):
        assert m in build_native.COMPILED


def _replay(seed: int, mode: str) -> dict:
    env = {**os.environ, "LORAPLEX_NATIVE": mode}
    out = subprocess.run(
        [sys.executable, str(REPLAY), str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_decides_exactly_as_interpreted(seed: int) -> None:
    interpreted = _replay(seed, "off")
    assert not any(interpreted.pop("compiled").values())
    compiled = _replay(seed, "auto")
    if not all(compiled.pop("compiled").values()):
        pytest.skip(
            "no compiled build of these sources here (python -m loraplex.tooling.build_native)"
        )
    for policy in ("vtc", "lcf", "fcfs", "rpm"):
        decisions = interpreted[policy]["decisions"]
        assert sum(d[0] == "wait" for d in decisions) > 50  # the cluster fills up: waits happen
        assert sum(len(d) > 2 and bool(d[2]) for d in decisions) > 20  # disaggregated too
        assert compiled[policy] == interpreted[policy], policy


def test_compiled_per_request_records_stay_out_of_the_garbage_collector() -> None:
    """A queued and a running request are the objects a busy scheduler holds by the hundred
    thousand; compiled they are not tracked, so full collections do not walk them (a
    ``deque`` entry ``(seq, request)`` then goes untracked too)."""
    import gc

    from loraplex.scheduler.policies.base import QueuedRequest, _Running

    if not native.is_compiled("loraplex.scheduler.policies.base"):
        pytest.skip(
            "no compiled build of these sources here (python -m loraplex.tooling.build_native)"
        )
    queued = QueuedRequest("r1", "t1", 10, 20, 0.0, "a1")
    entry = (1, queued)
    gc.collect()
    assert not gc.is_tracked(queued)
    assert not gc.is_tracked(_Running("t1", 10, 20.0))
    assert not gc.is_tracked(entry)
