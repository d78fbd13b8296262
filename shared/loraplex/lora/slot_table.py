"""Which adapter sits in which device slot: LRU over unpinned slots, pins while requests run.

Pure Python bookkeeping; the tensors live in ``loraplex.lora.weights.LoraWeights``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotGrant:
    slot: int
    needs_load: bool  # the caller must copy the adapter's weights into the slot before use
    evicted: str | None  # the adapter that previously held the slot, if any


class SlotTable:
    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError("max_loras must be at least 1")
        self.num_slots = num_slots
        self._slot_of: dict[str, int] = {}
        self._pins: dict[str, int] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident and unpinned, oldest first
        self._free = list(range(num_slots - 1, -1, -1))

    def slot_of(self, name: str) -> int | None:
        return self._slot_of.get(name)

    def resident(self) -> list[str]:
        return list(self._slot_of)

    def pinned(self, name: str) -> int:
        return self._pins.get(name, 0)

    def pinned_slots(self) -> int:
        """Slots held by running requests: an adapter not in a slot waits while all are."""
        return len(self._pins)

    def can_acquire(self, name: str) -> bool:
        return name in self._slot_of or bool(self._free) or bool(self._lru)

    def acquire(self, name: str) -> SlotGrant | None:
        """Pin ``name`` into a slot, evicting the least recently used unpinned adapter if needed.

        Returns None when every slot is pinned by running requests.
        """
        evicted = None
        slot = self._slot_of.get(name)
        needs_load = slot is None
        if slot is None:
            if self._free:
                slot = self._free.pop()
            elif self._lru:
                evicted, _ = self._lru.popitem(last=False)
                slot = self._slot_of.pop(evicted)
            else:
                return None
            self._slot_of[name] = slot
        self._lru.pop(name, None)
        self._pins[name] = self._pins.get(name, 0) + 1
        return SlotGrant(slot, needs_load, evicted)

    def release(self, name: str) -> None:
        count = self._pins.get(name, 0) - 1
        if count < 0:
            raise ValueError(f"release of adapter {name!r} that is not pinned")
        if count == 0:
            del self._pins[name]
            if name in self._slot_of:
                self._lru[name] = None
        else:
            self._pins[name] = count

    def evict(self, name: str) -> int | None:
        """Drop ``name`` from its slot now (e.g. the adapter was deleted); refused while pinned."""
        if self._pins.get(name):
            raise ValueError(f"adapter {name!r} is in use by running requests")
        slot = self._slot_of.pop(name, None)
        if slot is not None:
            self._lru.pop(name, None)
            self._free.append(slot)
        return slot
