"""Backlogged tenants in a lazy min-heap, so a policy's pick costs O(log n), not a scan.

A policy gives ``key(tenant)``: the tuple it orders tenants by (VTC: ``(counter, head seq)``;
FCFS: ``(head seq,)``), or ``None`` when the tenant has nothing queued.  It calls ``touch(tenant)``
whenever that key may have changed.  Touched tenants are pushed with their current key at the next
``top()`` (so several changes between two picks cost one push), and entries whose key is no longer
the tenant's current key are dropped when they reach the top (lazy invalidation).

Exactness: every backlogged tenant has an entry with its current key (it was pushed when its key
last changed), an entry is only ever returned when it equals the tenant's current key, and keys
end in an enqueue sequence number that no two tenants share, so ``top()`` is the tenant with the
smallest key: the very tenant a linear scan over all backlogged tenants returns.

Stale entries are compacted away (rebuild from the backlogged tenants) once they outnumber the
live ones, so memory stays O(backlogged) and the rebuild's cost is amortised over the pushes that
made it necessary.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from heapq import heapify, heappop, heappush
from typing import Any

Key = tuple[Any, ...]

COMPACT_MIN = 64  # never compact a heap smaller than this


class BacklogHeap:
    """Lazy min-heap of ``(*key(tenant), tenant)`` over ``tenants()`` (the backlogged ones)."""

    __slots__ = ("_key", "_tenants", "_heap", "_dirty", "touch")

    def __init__(
        self, key: Callable[[str], Key | None], tenants: Callable[[], Collection[str]]
    ) -> None:
        self._key = key
        self._tenants = tenants
        self._heap: list[Key] = []
        self._dirty: set[str] = set()
        # touch(tenant): ``tenant``'s key may have changed (or it joined or left the backlog).
        # The set's own add, bound once: it runs several times per decision.
        self.touch: Callable[[str], None] = self._dirty.add

    def top(self) -> str | None:
        """The backlogged tenant with the smallest key, or ``None`` when none is backlogged."""
        heap, key = self._heap, self._key
        if self._dirty:
            for t in self._dirty:
                k = key(t)
                if k is not None:
                    heappush(heap, (*k, t))
            self._dirty.clear()
            if len(heap) > COMPACT_MIN and len(heap) > 2 * len(self._tenants()):
                self.rebuild()
        while heap:
            entry = heap[0]
            t = entry[-1]
            if key(t) == entry[:-1]:
                return t
            heappop(heap)
        return None

    def rebuild(self) -> None:
        """One entry per backlogged tenant, from scratch (after a restore, or to compact)."""
        key = self._key
        heap = []
        for t in self._tenants():
            k = key(t)
            if k is not None:
                heap.append((*k, t))
        heapify(heap)
        self._heap = heap
        self._dirty.clear()

    def __len__(self) -> int:
        """Entries held, stale ones included (for tests of the compaction)."""
        return len(self._heap)
