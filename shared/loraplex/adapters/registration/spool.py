"""``Spool``: one upload's weights in a private temporary file, so neither the upload nor its
validation nor its staging into Redis holds the file in memory.

The file is created 0600 under ``--upload-dir`` (``LORAPLEX_UPLOAD_DIR``; default the system's
temp dir) and removed by ``delete()``, or when the ``Spool`` is garbage-collected or the process
exits, whichever comes first.  A process killed with SIGKILL removes nothing, so the file name
carries the owner's pid and ``sweep_orphans`` (run at start) removes the files of dead owners.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from pathlib import Path
from typing import BinaryIO

from loraplex.adapters.errors import AdapterTooLargeError

COPY_BLOCK = 1024 * 1024
PREFIX = "loraplex-upload-"
SUFFIX = ".safetensors"


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=SUFFIX, dir=directory)
        self.path = Path(path)
        self.size = 0
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._remove = weakref.finalize(self, _remove, self._file, path)

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """Every byte written: flushed and closed for writing (readers open ``path``)."""
        self._file.close()

    def delete(self) -> None:
        self._remove()

    @classmethod
    def of_bytes(cls, data: bytes, directory: str | None = None) -> Spool:
        """A spool holding ``data`` (tests and trusted callers that already hold the bytes)."""
        spool = cls(directory)
        spool.write(data)
        spool.finish()
        return spool

    @classmethod
    def copy_of(
        cls, src: str | Path, limit: int, too_large: AdapterTooLargeError, directory: str | None
    ) -> Spool:
        """A spooled copy of ``src`` in blocks (blocking: call in a thread); ``too_large`` is
        raised once more than ``limit`` bytes were read."""
        spool = cls(directory)
        try:
            with open(src, "rb") as f:
                while block := f.read(min(COPY_BLOCK, limit - spool.size + 1)):
                    spool.write(block)
                    if spool.size > limit:
                        raise too_large
            spool.finish()
        except BaseException:
            spool.delete()
            raise
        return spool


def _remove(file: BinaryIO, path: str) -> None:
    file.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sweep_orphans(directory: str | None = None) -> int:
    """Remove spool files whose owning process is gone (a store killed mid-upload); returns how
    many.  Files of live processes (another store or gateway sharing the directory) are kept."""
    removed = 0
    folder = Path(directory or tempfile.gettempdir())
    for path in folder.glob(f"{PREFIX}*{SUFFIX}"):
        owner = path.name[len(PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
