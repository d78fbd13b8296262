"""Host-memory tier of adapters: LRU under a byte budget, pinned while requests use them.

Pure Python bookkeeping; the cached values are opaque to it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class HostAdapterCache(Generic[V]):
    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 1:
            raise ValueError("host cache budget must be positive")
        self.budget = budget_bytes
        self._entries: OrderedDict[str, tuple[V, int]] = OrderedDict()  # oldest first
        self._pins: dict[str, int] = {}
        self.used = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> V | None:
        entry = self._entries.get(name)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(name)
        return entry[0]

    def put(self, name: str, value: V, nbytes: int) -> list[str]:
        """Insert (or replace) an entry; returns the names evicted to make room.

        An entry larger than the whole budget is still kept while it is the only one (a request
        needs it); pinned entries are never evicted, so the budget can be exceeded temporarily.
        """
        self.drop(name)
        self._entries[name] = (value, nbytes)
        self.used += nbytes
        return self._shrink(keep=name)

    def _shrink(self, keep: str | None = None) -> list[str]:
        evicted = []
        for victim in list(self._entries):
            if self.used <= self.budget:
                break
            if victim == keep or self._pins.get(victim):
                continue
            self.drop(victim)
            evicted.append(victim)
        return evicted

    def drop(self, name: str) -> bool:
        entry = self._entries.pop(name, None)
        if entry is None:
            return False
        self.used -= entry[1]
        return True

    def pin(self, name: str) -> None:
        self._pins[name] = self._pins.get(name, 0) + 1

    def unpin(self, name: str) -> list[str]:
        """Release one pin; returns names evicted now that the entry may go."""
        count = self._pins.get(name, 0) - 1
        if count < 0:
            raise ValueError(f"unpin of {name!r} that is not pinned")
        if count:
            self._pins[name] = count
        else:
            self._pins.pop(name, None)
        return self._shrink()

    def pinned(self, name: str) -> int:
        return self._pins.get(name, 0)
