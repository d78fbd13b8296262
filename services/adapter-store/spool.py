"""``Spool``: one upload's weights in a private temporary file, so neither the upload nor its
validation nor its staging into Redis holds the file in memory.

The file is created 0600 under ``--upload-dir`` (``LORAPLEX_UPLOAD_DIR``; default the system's
temp dir) and removed by ``delete()``, or when the ``Spool`` is garbage-collected or the process
exits, whichever comes first.
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


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="loraplex-upload-", suffix=".safetensors", dir=directory)
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
