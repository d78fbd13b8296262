"""Every package folder is listed in pyproject.toml: the image installs the project without -e
(``pip install .``), so a folder missing from ``packages`` is absent there while the editable
install used by tests still finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_installed() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / folder for name, folder in setup["package-dir"].items()}
    listed = set(setup["packages"])
    found = set()
    for name, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            package = ".".join((name, *rel))
            owner = max((n for n in dirs if package == n or package.startswith(n + ".")), key=len)
            if owner == name:  # a subpackage mapped to its own folder is found from there
                found.add(package)
    assert found - listed == set(), "add to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages without a folder"
