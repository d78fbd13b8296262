"""Where the Files and Batch APIs keep their state, behind one protocol: ``MemoryBatchStore``
(this process; a gateway without Redis) and ``RedisBatchStore`` (``store_redis.py``; shared by
every gateway replica, so any of them answers for a batch and takes over one whose gateway died).

**Tenants never meet**: every key holds the tenant, so another tenant's id reads as absent (the
same 404 as an id never issued).  **Bounded**: a tenant keeps at most ``files_per_tenant`` files
and ``tenant_bytes`` of them, checked atomically with each upload; a batch's output and error
files are stored even past that budget (a batch's results are never thrown away), and a tenant
over it can upload nothing and start no batch until it deletes files.  Everything is forgotten
``ttl_s`` after it was made, a file at its ``expires_at`` when that is sooner (``expiry.py``;
its bytes leave the tenant's budget then).  A batch's results go in as each request ends, the first answer for
a line wins (a line a dead gateway had in flight may run again on its successor), and its
*lease* names the gateway running it.  Plain Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from loraplex.gateway.batches.errors import BatchLimitError, FilesQuotaError
from loraplex.gateway.batches.limits import MIB, BatchLimits

Record = dict[str, Any]
Change = Callable[[Record], Record | None]  # the new record, or None to leave it


def quota_error(limits: BatchLimits, count: int, total: int, size: int) -> FilesQuotaError | None:
    if count + 1 > limits.files_per_tenant:
        return FilesQuotaError(
            f"you already have {count} files, the most one tenant may keep is "
            f"{limits.files_per_tenant}; delete some first"
        )
    if total + size > limits.tenant_bytes:
        return FilesQuotaError(
            f"your files would take {(total + size) / MIB:.1f} MiB, the most one tenant may keep "
            f"is {limits.tenant_bytes / MIB:.1f} MiB; delete some first"
        )
    return None


class BatchStore(Protocol):
    limits: BatchLimits

    async def put_file(self, tenant: str, meta: Record, content: bytes, forced: bool) -> None:
        """Store a file; ``FilesQuotaError`` past the tenant's budget unless ``forced``."""

    async def get_file(self, tenant: str, file_id: str) -> Record | None: ...
    async def file_content(self, tenant: str, file_id: str) -> bytes | None: ...
    async def list_files(self, tenant: str) -> list[Record]:
        """The tenant's files, newest first."""

    async def delete_file(self, tenant: str, file_id: str) -> Record | None: ...
    async def put_batch(self, tenant: str, batch: Record) -> None: ...
    async def get_batch(self, tenant: str, batch_id: str) -> Record | None: ...
    async def list_batches(self, tenant: str) -> list[Record]:
        """The tenant's batches, newest first."""

    async def update_batch(self, tenant: str, batch_id: str, change: Change) -> Record | None:
        """Apply ``change`` atomically (whoever else writes the batch); the record after it."""

    async def add_result(
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record
    ) -> None:
        """The answer of line ``index``, unless it has one already."""

    async def results(self, tenant: str, batch_id: str) -> dict[int, tuple[bool, Record]]: ...
    async def activate(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> None:
        """Count the batch as running, leased to ``owner``; ``BatchLimitError`` when the tenant
        runs ``active_per_tenant`` already."""

    async def claim(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        """Take the lease of an active batch nobody holds; True when ``owner`` holds it now."""

    async def renew(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; False when it is not ``owner``'s any more."""

    async def orphans(self) -> list[tuple[str, str]]:
        """(tenant, batch id) of the active batches whose lease nobody holds."""

    async def deactivate(self, tenant: str, batch_id: str) -> None: ...


class MemoryBatchStore:
    """``BatchStore`` in this process's memory (one gateway; nothing to take over)."""

    def __init__(self, limits: BatchLimits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self.clock = clock
        self._files: dict[tuple[str, str], tuple[Record, bytes]] = {}
        self._batches: dict[tuple[str, str], Record] = {}
        self._results: dict[tuple[str, str], dict[int, tuple[bool, Record]]] = {}
        self._active: dict[tuple[str, str], tuple[str, float]] = {}  # -> (owner, lease until)

    def _purge(self) -> None:
        now = self.clock()
        cutoff = now - self.limits.ttl_s
        for key in [k for k, (m, _) in self._files.items() if m["expires_at"] <= now]:
            del self._files[key]
        for key in [k for k, b in self._batches.items() if b["created_at"] < cutoff]:
            del self._batches[key]
            self._results.pop(key, None)

    async def put_file(self, tenant: str, meta: Record, content: bytes, forced: bool) -> None:
        self._purge()
        mine = [len(c) for (t, _), (_, c) in self._files.items() if t == tenant]
        err = quota_error(self.limits, len(mine), sum(mine), len(content))
        if err is not None and not forced:
            raise err
        self._files[(tenant, meta["id"])] = (meta, content)

    async def get_file(self, tenant: str, file_id: str) -> Record | None:
        self._purge()
        found = self._files.get((tenant, file_id))
        return found[0] if found else None

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        self._purge()
        found = self._files.get((tenant, file_id))
        return found[1] if found else None

    async def list_files(self, tenant: str) -> list[Record]:
        self._purge()
        mine = [m for (t, _), (m, _) in self._files.items() if t == tenant]
        return sorted(mine, key=lambda m: m["created_at"], reverse=True)

    async def delete_file(self, tenant: str, file_id: str) -> Record | None:
        found = self._files.pop((tenant, file_id), None)
        return found[0] if found else None

    async def put_batch(self, tenant: str, batch: Record) -> None:
        self._batches[(tenant, batch["id"])] = batch

    async def get_batch(self, tenant: str, batch_id: str) -> Record | None:
        self._purge()
        return self._batches.get((tenant, batch_id))

    async def list_batches(self, tenant: str) -> list[Record]:
        self._purge()
        mine = [b for (t, _), b in self._batches.items() if t == tenant]
        return sorted(mine, key=lambda b: b["created_at"], reverse=True)

    async def update_batch(self, tenant: str, batch_id: str, change: Change) -> Record | None:
        old = self._batches.get((tenant, batch_id))
        if old is None:
            return None
        new = change(dict(old))
        if new is not None:
            self._batches[(tenant, batch_id)] = new
        return new or old

    async def add_result(
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record
    ) -> None:
        self._results.setdefault((tenant, batch_id), {}).setdefault(index, (ok, line))

    async def results(self, tenant: str, batch_id: str) -> dict[int, tuple[bool, Record]]:
        return dict(self._results.get((tenant, batch_id), {}))

    async def activate(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> None:
        if sum(t == tenant for t, _ in self._active) >= self.limits.active_per_tenant:
            raise BatchLimitError(too_many_batches(self.limits))
        self._active[(tenant, batch_id)] = (owner, self.clock() + lease_s)

    async def claim(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        held = self._active.get((tenant, batch_id))
        if held is None or (held[1] > self.clock() and held[0] != owner):
            return False
        self._active[(tenant, batch_id)] = (owner, self.clock() + lease_s)
        return True

    async def renew(self, tenant: str, batch_id: str, owner: str, lease_s: float) -> bool:
        return await self.claim(tenant, batch_id, owner, lease_s)

    async def orphans(self) -> list[tuple[str, str]]:
        now = self.clock()
        return [k for k, (_, until) in self._active.items() if until <= now]

    async def deactivate(self, tenant: str, batch_id: str) -> None:
        self._active.pop((tenant, batch_id), None)


def too_many_batches(limits: BatchLimits) -> str:
    return (
        f"you already run {limits.active_per_tenant} batches, the most one tenant may run at "
        "once; wait for one to end, or cancel one"
    )
