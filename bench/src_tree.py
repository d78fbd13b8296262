"""The checkout as an importable ``loraplex`` package, with nothing installed.

``pyproject.toml`` maps subpackages to folders outside ``shared/loraplex`` (``loraplex.tooling`` is
``tooling/``, ``loraplex.worker`` is ``services/worker``, ...), so ``PYTHONPATH=shared`` alone
cannot import them: the device machine's python has no install of the project, and
``tests/conftest.py`` imports ``loraplex.tooling``.  This builds a folder of symlinks that lays the
package out as an install would and prints it, for ``PYTHONPATH``:

    PYTHONPATH=$(python3 bench/src_tree.py /tmp/src) python3 -m pytest ...

Standard library only (it runs before anything of the project can be imported).  Symlinks, not
copies, so the tree always shows the checkout's files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Each package of ``[tool.setuptools] package-dir`` and its folder, outermost first."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {name: root / folder for name, folder in config["package-dir"].items()}
    return dict(sorted(mapping.items(), key=lambda item: item[0].count(".")))


def build(dest: Path, root: Path = ROOT) -> Path:
    """Lay out every mapped package under ``dest`` (emptied first); return ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, folder in package_dirs(root).items():
        target = dest.joinpath(*name.split("."))
        if name.count(".") == 0:
            # The top package is a real folder, so mapped subpackages can be linked inside it.
            target.mkdir(parents=True, exist_ok=True)
            for entry in folder.iterdir():
                if not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry.resolve())
        else:
            if target.is_symlink() or target.exists():
                raise SystemExit(f"{name}: {target} already exists in {folder.parent}")
            target.symlink_to(folder.resolve(), target_is_directory=True)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 bench/src_tree.py DEST")
    print(build(Path(sys.argv[1]).resolve()))
