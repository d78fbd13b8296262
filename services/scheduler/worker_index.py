"""Indexes the worker registry keeps so placement never scans every worker.

* ``RoleIndex``: per role, the workers in two lazy min-heaps, by load ``(load, worker id)`` and by
  free KV blocks ``(committed - total, worker id)``.  The registry pushes a worker again whenever
  its load or committed blocks went *down*, or its capacity or placeability changed (into the
  free-blocks heap only when that is read).  A commit, which only raises them, pushes nothing:
  every worker keeps an entry at or below its current key, so the top is still the minimum, and
  placement renews an entry that is too low when it reaches the top.  An entry above its
  worker's key (a release pushed the lower one) is dropped there.  Stale entries are compacted
  away once they outnumber the live ones (amortised O(1) per push).
* ``SampleSet``: a set with O(1) add, discard and uniform random sample (the workers holding an
  adapter, for power-of-two choices).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from heapq import heapify, heappush

COMPACT_MIN = 64


class RoleIndex:
    """The workers of one role: ``members`` (every live one) and the two lazy heaps."""

    __slots__ = ("members", "by_load", "by_free", "free_pending")

    def __init__(self) -> None:
        self.members: set[str] = set()
        self.by_load: list[tuple[float, str]] = []
        self.by_free: list[tuple[int, str]] = []
        # Workers whose free blocks changed since ``by_free`` was last read: it is read only when
        # no worker near the top of ``by_load`` has room, so it is brought up to date then
        # (``flush_free``) rather than on every commit and release.
        self.free_pending: set[str] = set()

    def flush_free(self, entry: Callable[[str], tuple[int, str] | None]) -> None:
        """Push the pending workers' current ``by_free`` entries (``entry``: None for a worker
        that is gone or not placeable)."""
        for wid in self.free_pending:
            e = entry(wid)
            if e is not None:
                heappush(self.by_free, e)
        self.free_pending.clear()

    def needs_compaction(self) -> bool:
        return len(self.by_load) > COMPACT_MIN and len(self.by_load) > 2 * len(self.members)

    def rebuild(self, by_load: list[tuple[float, str]], by_free: list[tuple[int, str]]) -> None:
        heapify(by_load)
        heapify(by_free)
        self.by_load, self.by_free = by_load, by_free
        self.free_pending.clear()


class SampleSet:
    """Worker ids; ``sample`` draws uniformly without scanning."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        i = self._pos.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):  # move the last item into the hole
            self._items[i] = last
            self._pos[last] = i

    def sample(self, rng: random.Random, k: int) -> list[str]:
        """Up to ``k`` distinct items, uniformly."""
        items = self._items
        n = len(items)
        if k >= n:
            return list(items)
        if k == 2:  # the common case (power of two choices), without random.sample's set-up
            i = int(rng.random() * n)
            j = int(rng.random() * (n - 1))
            return [items[i], items[j + 1 if j >= i else j]]
        return rng.sample(items, k)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
