"""``AdapterQuota``: how many adapters, and how many bytes of them, one tenant may keep stored.

Without it one tenant could fill Redis with uploads, and Redis holds what every tenant needs
(the other tenants' adapters, the scheduler's lease and ledger, stored responses).  The store
checks the quota in the same WATCH/MULTI/EXEC that commits an adapter (``AdapterStore._commit``),
against the owner's committed adapters (served or unloaded; a staged upload is bounded by
``--uploads-per-tenant`` and its TTL instead).  A replacement counts once, at its new size.

Limits: ``--max-adapters-per-tenant`` and ``--adapter-storage-per-tenant-mb`` (0: no limit), or a
tenant's own ``max_adapters`` / ``max_adapter_storage_mb`` in the tenants file.  Adapters the
operator preloads (``--lora-modules``) are not counted against it.  Plain Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from loraplex.adapters.errors import AdapterQuotaError

MIB = 1024 * 1024


@dataclass(frozen=True)
class AdapterQuota:
    """Limits of one tenant; None: unlimited."""

    max_adapters: int | None = None
    max_bytes: int | None = None

    @classmethod
    def of(cls, max_adapters: int | None, max_mb: float | None) -> AdapterQuota:
        """From the flags' units (0 or None: no limit)."""
        return cls(
            max_adapters=max_adapters or None,
            max_bytes=int(max_mb * MIB) if max_mb else None,
        )

    @property
    def unlimited(self) -> bool:
        return self.max_adapters is None and self.max_bytes is None

    def check(self, name: str, size: int, others: Iterable[int]) -> None:
        """Raise ``AdapterQuotaError`` unless the owner may keep adapter ``name`` of ``size``
        bytes beside ``others`` (the sizes of its other committed adapters, not ``name``'s
        previous version, which a replacement removes)."""
        sizes = list(others)
        if self.max_adapters is not None and len(sizes) + 1 > self.max_adapters:
            raise AdapterQuotaError(
                f"cannot store adapter {name!r}: you already have {len(sizes)} adapters, the "
                f"most one tenant may keep is {self.max_adapters}; delete one first"
            )
        total = sum(sizes) + size
        if self.max_bytes is not None and total > self.max_bytes:
            raise AdapterQuotaError(
                f"cannot store adapter {name!r}: your adapters would take {total / MIB:.1f} MiB, "
                f"the most one tenant may keep is {self.max_bytes / MIB:.1f} MiB; "
                "delete some first"
            )
