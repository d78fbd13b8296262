"""Render deploy/helm/loraplex as `helm template` would, with tests/deploy/gotemplate.py.

What Helm does and this reproduces: values.yaml deep-merged with the given overrides (maps merge,
anything else replaces), numbers as float64, the built-in objects the chart reads (.Values,
.Release, .Chart, .Files.Get), every ``define`` of every template file visible to every other,
files whose names start with ``_`` not rendered, each rendered file split into YAML documents on
``---`` lines, empty documents dropped.  What it does not: the dependency charts (nats, redis),
which are upstream's to render; the tests check the chart's URLs against their service names
instead.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.gotemplate import Renderer, TemplateError, helm_values

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "loraplex"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# What Helm's chart loader keeps out of .Files: the chart's own parts (loader.LoadFiles).
_NOT_FILES = {"Chart.yaml", "Chart.lock", "values.yaml", "values.schema.json",
              "requirements.yaml", "requirements.lock"}  # fmt: skip


def chart_files() -> dict[str, str]:
    """Helm's .Files: every other file of the chart by its slash-separated path from the chart
    root; templates/ and charts/ (the dependencies) are not in it."""
    files: dict[str, str] = {}
    for p in sorted(CHART.rglob("*")):
        name = p.relative_to(CHART).as_posix()
        own = name in _NOT_FILES or name.startswith(("templates/", "charts/"))
        if p.is_file() and not own:
            files[name] = p.read_text()
    return files


def files_get(files: dict[str, str], name: Any) -> str:
    """Helm's .Files.Get: the file's content as a string, "" when the chart has no such file (the
    name is a key, not a path: "./files/x" or "files/../x" are not found)."""
    if not isinstance(name, str):
        raise TemplateError(f"Files.Get of {name!r}: wrong type for value; expected string")
    return files.get(name, "")


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render(
    overrides: dict[str, Any] | None = None,
    release: str = "prod",
    namespace: str = "serving",
) -> list[dict[str, Any]]:
    """The chart's manifests for these value overrides (TemplateError on a failed render)."""
    meta = chart_meta()
    values = deep_merge(default_values(), overrides or {})
    ctx = {
        "Values": helm_values(values),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta["appVersion"],
        },
        "Files": {"Get": functools.partial(files_get, chart_files())},
    }
    renderer = Renderer()
    files = sorted(p for p in (CHART / "templates").iterdir() if p.suffix in (".yaml", ".tpl"))
    parsed = {p.name: renderer.add(p.read_text()) for p in files}  # every define first
    docs: list[dict[str, Any]] = []
    for name, nodes in parsed.items():
        if name.startswith("_") or not name.endswith(".yaml"):
            continue
        text = renderer.render(nodes, ctx, ctx)
        for part in re.split(r"(?m)^---\s*$", text):
            doc = yaml.safe_load(part)
            if doc is not None:
                docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
