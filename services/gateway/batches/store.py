"""Where the Files and Batch APIs keep their state, behind one protocol: ``MemoryBatchStore``
(this process; a gateway without Redis) and ``RedisBatchStore`` (``store_redis.py``; shared by
every gateway replica, so any of them answers for a batch and takes over one whose gateway died).

**Tenants never meet**: every key holds the tenant, so another tenant's id reads as absent (the
same 404 as an id never issued).  **Bounded**: a tenant keeps at most ``files_per_tenant`` files
and ``tenant_bytes`` of them, checked atomically with each upload, and at most ``batches_kept``
batches (any status).  A running batch's answers count in that byte budget as they are stored:
an answer larger than ``result_max_bytes``, or than what is left of the budget, is not kept
(``ResultTooLargeError``; the run stores that line's small error instead, ``forced``, counted but
never refused, so no line is lost).  When the batch ends its answers become its output and error
files (stored ``forced``: their bytes were counted already) and are dropped.  A tenant over its
budget can upload nothing and start no batch until it deletes files.  Everything is forgotten
``ttl_s`` after it was made, a file at its ``expires_at`` when that is sooner (``expiry.py``;
its bytes leave the tenant's budget then).  The first answer stored for a line wins (a line a dead
gateway had in flight may run again on its successor), and a batch's *lease* names the gateway
running it.  Plain Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from loraplex.gateway.batches.budget import (
    Record,
    Usage,
    budget_error,
    encode_result,
    quota_error,
    too_many_batches,
    too_many_kept,
)
from loraplex.gateway.batches.errors import BatchLimitError
from loraplex.gateway.batches.limits import BatchLimits

__all__ = ["BatchStore", "Change", "MemoryBatchStore", "Record", "Usage", "quota_error"]
Change = Callable[[Record], Record | None]  # the new record, or None to leave it


class BatchStore(Protocol):
    limits: BatchLimits

    async def put_file(
        self, tenant: str, meta: Record, content: bytes | bytearray, forced: bool
    ) -> None:
        """Store a file; ``FilesQuotaError`` past the tenant's budget unless ``forced``."""

    async def usage(self, tenant: str) -> Usage: ...

    async def get_file(self, tenant: str, file_id: str) -> Record | None: ...
    async def file_content(self, tenant: str, file_id: str) -> bytes | None: ...
    async def list_files(self, tenant: str) -> list[Record]:
        """The tenant's files, newest first."""

    async def delete_file(self, tenant: str, file_id: str) -> Record | None: ...
    async def put_batch(self, tenant: str, batch: Record) -> None:
        """Store a new batch; ``BatchLimitError`` when the tenant keeps ``batches_kept``."""

    async def get_batch(self, tenant: str, batch_id: str) -> Record | None: ...
    async def list_batches(self, tenant: str) -> list[Record]:
        """The tenant's batches, newest first."""

    async def page_batches(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[Record], bool]:
        """Up to ``limit`` of the tenant's batches, newest first, after the one whose id is
        ``after`` (none when it is unknown), and whether more follow; reads only those."""

    async def update_batch(self, tenant: str, batch_id: str, change: Change) -> Record | None:
        """Apply ``change`` atomically (whoever else writes the batch); the record after it."""

    async def add_result(
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record, forced: bool = False
    ) -> None:
        """The answer of line ``index``, unless it has one already, counted in the tenant's
        budget; ``ResultTooLargeError`` (nothing stored) past ``result_max_bytes`` or the
        budget, unless ``forced``."""

    async def answered(self, tenant: str, batch_id: str) -> dict[int, bool]:
        """Line index -> whether its stored answer is a 200 (the answers stay in the store)."""

    async def result_lines(
        self, tenant: str, batch_id: str, indices: list[int]
    ) -> dict[int, tuple[bool, bytes]]:
        """The stored answers of ``indices`` that have one, encoded as the output file holds
        them (a run reads them a slice at a time)."""

    async def drop_results(self, tenant: str, batch_id: str) -> None:
        """Forget the batch's answers (written to its files) and free their bytes."""

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
        self._results: dict[tuple[str, str], dict[int, bytes]] = {}  # index -> encode_result
        self._held: dict[tuple[str, str], int] = {}  # the bytes of each batch's stored answers
        self._active: dict[tuple[str, str], tuple[str, float]] = {}  # -> (owner, lease until)

    def _purge(self) -> None:
        now = self.clock()
        cutoff = now - self.limits.ttl_s
        for key in [k for k, (m, _) in self._files.items() if m["expires_at"] <= now]:
            del self._files[key]
        for key in [k for k, b in self._batches.items() if b["created_at"] < cutoff]:
            del self._batches[key]
            self._results.pop(key, None)
            self._held.pop(key, None)

    def _bytes(self, tenant: str) -> tuple[int, int]:
        """(files, their bytes plus the tenant's stored answers)."""
        mine = [len(c) for (t, _), (_, c) in self._files.items() if t == tenant]
        held = sum(n for (t, _), n in self._held.items() if t == tenant)
        return len(mine), sum(mine) + held

    async def put_file(
        self, tenant: str, meta: Record, content: bytes | bytearray, forced: bool
    ) -> None:
        self._purge()
        err = quota_error(self.limits, *self._bytes(tenant), len(content))
        if err is not None and not forced:
            raise err
        self._files[(tenant, meta["id"])] = (meta, bytes(content))

    async def usage(self, tenant: str) -> Usage:
        self._purge()
        batches = sum(t == tenant for t, _ in self._batches)
        return Usage(*self._bytes(tenant), batches)

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
        self._purge()
        key = (tenant, batch["id"])
        if key not in self._batches and (await self.usage(tenant)).batches >= (
            self.limits.batches_kept
        ):
            raise too_many_kept(self.limits)
        self._batches[key] = batch

    async def get_batch(self, tenant: str, batch_id: str) -> Record | None:
        self._purge()
        return self._batches.get((tenant, batch_id))

    async def list_batches(self, tenant: str) -> list[Record]:
        self._purge()
        mine = [b for (t, _), b in self._batches.items() if t == tenant]
        # newest first, ties by id as Redis's sorted set orders them
        return sorted(mine, key=lambda b: (b["created_at"], b["id"]), reverse=True)

    async def page_batches(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[Record], bool]:
        mine = await self.list_batches(tenant)
        if after is not None:
            ids = [b["id"] for b in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        return mine[:limit], len(mine) > limit

    async def update_batch(self, tenant: str, batch_id: str, change: Change) -> Record | None:
        old = self._batches.get((tenant, batch_id))
        if old is None:
            return None
        new = change(dict(old))
        if new is not None:
            self._batches[(tenant, batch_id)] = new
        return new or old

    async def add_result(
        self, tenant: str, batch_id: str, index: int, ok: bool, line: Record, forced: bool = False
    ) -> None:
        key = (tenant, batch_id)
        if index in self._results.get(key, {}):
            return  # the first answer wins
        raw = await encode_result(ok, line, self.limits, forced)
        used = self._bytes(tenant)[1]
        if not forced and used + len(raw) > self.limits.tenant_bytes:
            raise budget_error(self.limits, used, len(raw))
        if self._results.setdefault(key, {}).setdefault(index, raw) is raw:
            self._held[key] = self._held.get(key, 0) + len(raw)

    async def answered(self, tenant: str, batch_id: str) -> dict[int, bool]:
        return {i: r[:1] == b"1" for i, r in self._results.get((tenant, batch_id), {}).items()}

    async def result_lines(
        self, tenant: str, batch_id: str, indices: list[int]
    ) -> dict[int, tuple[bool, bytes]]:
        mine = self._results.get((tenant, batch_id), {})
        return {i: (mine[i][:1] == b"1", mine[i][1:]) for i in indices if i in mine}

    async def drop_results(self, tenant: str, batch_id: str) -> None:
        self._results.pop((tenant, batch_id), None)
        self._held.pop((tenant, batch_id), None)

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
