"""``DiskCopies``: a worker's copies of the adapters it paged in, on its local disk, so that a
worker restarted while the adapter store (Redis) is down can still serve them.

A restarted worker starts with empty memory.  Without these copies, every adapter request placed on
it fails until Redis is back, although the adapter was in its memory a moment before (the chaos
soak with Redis faults lost most of its failed requests this way).  LoRAX keeps downloaded
adapters in a local disk cache for the same reason.

A copy is only a stand-in for the store, never preferred to it: the worker reads the store first
and falls back to a copy only when the store cannot be reached.  A copy serves then only while it is
*trusted*: confirmed current within ``trust_s``; the file's mtime is the time of the last
confirmation.  Confirmed means written (or found identical) by ``keep`` after a verified fetch, or
touched by ``confirm`` since: this process wrote or checked it, and ``drop`` deletes a copy when a
change event says the adapter was replaced, deleted or unloaded, so a copy this process still has
is current as long as it keeps hearing those events.  An adapter replaced or deleted while its
worker was down is confirmed by nobody (a new process confirms only what it kept itself), so its
copy ages out.  The gateway remembers adapter names for the same
default window (``LORAPLEX_GATEWAY_ADAPTER_STALE_S``), so together they ride out the same outage.

One file per adapter id, ``<sha256(id)[:32]>.v<version>.lpa``: magic, a JSON header (id, version,
both parts' sizes and sha256), adapter_config.json, adapter_model.safetensors.  Written to a
temporary name and renamed, so a reader never sees half a file; verified (id and sha256) on every
read, so a damaged file is dropped, never served.  Kept under ``budget_bytes``, least recently
confirmed dropped first.  One directory per worker.  Plain Python, blocking file IO: call it from
a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"LPXA1\n"
SUFFIX = ".lpa"
_VERSION = re.compile(r"[0-9]{1,20}")
_HEADER_MAX = 64 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DiskCopy:
    """One adapter version read back from disk (verified)."""

    adapter_id: str
    version: str
    config_bytes: bytes
    weights_bytes: bytes


class DiskCopies:
    def __init__(
        self,
        root: str | Path,
        budget_bytes: int,
        trust_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if budget_bytes < 1:
            raise ValueError("the adapter disk cache budget must be positive")
        if not trust_s >= 0:
            raise ValueError("the adapter disk cache trust window must be >= 0 seconds")
        self.root = Path(root)
        self.budget = budget_bytes
        self.trust_s = trust_s
        self.clock = clock  # wall clock: mtimes outlive the process
        self._lock = threading.Lock()  # writes, drops and eviction: one at a time
        self._kept: dict[str, str] = {}  # adapter id -> version this process wrote or checked
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob("*.tmp"):  # a write cut short by a kill
            leftover.unlink(missing_ok=True)

    # ---- paths -------------------------------------------------------------------------------
    @staticmethod
    def _stem(adapter_id: str) -> str:
        return hashlib.sha256(adapter_id.encode()).hexdigest()[:32]

    def _path(self, adapter_id: str, version: str) -> Path:
        if not _VERSION.fullmatch(version):
            raise ValueError(f"not a store version: {version!r}")
        return self.root / f"{self._stem(adapter_id)}.v{version}{SUFFIX}"

    def _versions(self, adapter_id: str) -> list[Path]:
        return list(self.root.glob(f"{self._stem(adapter_id)}.v*{SUFFIX}"))

    # ---- writes ------------------------------------------------------------------------------
    def keep(self, adapter_id: str, version: str, config: bytes, weights: bytes) -> None:
        """A verified fetch of ``version``: write its copy (or confirm the one there), drop the
        adapter's other versions, and evict beyond the budget."""
        path = self._path(adapter_id, version)
        with self._lock:
            for other in self._versions(adapter_id):
                if other != path:
                    other.unlink(missing_ok=True)
            fields = {
                "id": adapter_id,
                "version": version,
                "config_bytes": len(config),
                "config_sha256": _sha256(config),
                "weights_bytes": len(weights),
                "weights_sha256": _sha256(weights),
            }
            self._kept[adapter_id] = version
            if self._read_header(path) == fields:  # the same bytes (a store rebuilt from
                self._touch(path)  # scratch numbers versions from 1 again: compare content)
                return
            header = json.dumps(fields).encode()
            size = len(MAGIC) + 4 + len(header) + len(config) + len(weights)
            if size > self.budget:
                return  # larger than the whole budget: the store stays its only home
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(MAGIC + len(header).to_bytes(4, "big") + header)
                    f.write(config)
                    f.write(weights)
                os.replace(tmp, path)  # readers see the whole file or none
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk: no half file left behind
                raise
            self._touch(path)
            self._evict(keep=path)

    def drop(self, adapter_id: str) -> None:
        """The adapter was replaced, deleted or unloaded: its copies must not serve again."""
        with self._lock:
            self._kept.pop(adapter_id, None)
            for path in self._versions(adapter_id):
                path.unlink(missing_ok=True)

    def confirm(self) -> None:
        """Every copy this process kept and no event dropped is still current: keep it trusted.
        Call it every so often, only while the store's change events reach the worker."""
        with self._lock:
            kept = list(self._kept.items())
        for adapter_id, version in kept:
            # missing: evicted, or never written (larger than the budget)
            with contextlib.suppress(FileNotFoundError):
                self._touch(self._path(adapter_id, version))

    def _touch(self, path: Path) -> None:
        now = self.clock()
        os.utime(path, (now, now))

    def _evict(self, keep: Path) -> None:
        files = []
        for path in self.root.glob(f"*{SUFFIX}"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        used = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):  # least recently confirmed first
            if used <= self.budget:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                used -= size

    # ---- reads -------------------------------------------------------------------------------
    def recall(self, adapter_id: str) -> DiskCopy | None:
        """The newest trusted copy of ``adapter_id``, verified; None when there is none."""
        now = self.clock()
        best: tuple[int, Path] | None = None
        for path in self._versions(adapter_id):
            try:
                fresh = now - path.stat().st_mtime <= self.trust_s
                version = int(path.name[len(self._stem(adapter_id)) + 2 : -len(SUFFIX)])
            except (FileNotFoundError, ValueError):
                continue
            if fresh and (best is None or version > best[0]):
                best = (version, path)
        if best is None:
            return None
        copy = self._read(best[1], adapter_id, str(best[0]))
        if copy is None:
            log.warning("adapter disk copy %s is damaged: dropped", best[1].name)
            best[1].unlink(missing_ok=True)
        return copy

    @staticmethod
    def _read_header(path: Path) -> dict | None:
        """The header of the file at ``path``; None if there is none or it is damaged."""
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC) + 4)
                parsed = _parse_header(head + f.read(_header_size(head)))
        except OSError:
            return None
        return parsed[0] if parsed else None

    @staticmethod
    def _read(path: Path, adapter_id: str, version: str) -> DiskCopy | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        parsed = _parse_header(data)
        if parsed is None:
            return None
        header, start = parsed
        try:
            n_config, n_weights = int(header["config_bytes"]), int(header["weights_bytes"])
            config = data[start : start + n_config]
            weights = data[start + n_config :]
            ok = (
                header["id"] == adapter_id
                and header["version"] == version
                and len(config) == n_config
                and len(weights) == n_weights
                and _sha256(config) == header["config_sha256"]
                and _sha256(weights) == header["weights_sha256"]
            )
        except (ValueError, KeyError, TypeError):
            return None
        return DiskCopy(adapter_id, version, config, weights) if ok else None


def _header_size(head: bytes) -> int:
    """The header's length from the magic and length prefix (0 if they are not there)."""
    if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
        return 0
    return min(int.from_bytes(head[len(MAGIC) : len(MAGIC) + 4], "big"), _HEADER_MAX + 1)


def _parse_header(data: bytes) -> tuple[dict, int] | None:
    """(header, offset of the body) of a file's bytes (at least its header); None if damaged."""
    size = _header_size(data)
    start = len(MAGIC) + 4 + size
    if size == 0 or size > _HEADER_MAX or len(data) < start:
        return None
    try:
        header = json.loads(data[len(MAGIC) + 4 : start])
    except ValueError:
        return None
    return (header, start) if isinstance(header, dict) else None
