"""SlotTable: pins, LRU eviction of unpinned adapters only, and refusals while pinned."""

from __future__ import annotations

import pytest

from loraplex.lora.slot_table import SlotTable


def test_needs_at_least_one_slot():
    with pytest.raises(ValueError):
        SlotTable(0)


def test_first_acquire_loads_into_a_free_slot_and_pins():
    table = SlotTable(2)
    grant = table.acquire("a")
    assert grant is not None
    assert grant.needs_load
    assert grant.evicted is None
    assert grant.slot in (0, 1)
    assert table.slot_of("a") == grant.slot
    assert table.pinned("a") == 1
    assert table.resident() == ["a"]


def test_distinct_adapters_get_distinct_slots():
    table = SlotTable(3)
    slots = [table.acquire(n).slot for n in ("a", "b", "c")]
    assert sorted(slots) == [0, 1, 2]


def test_reacquire_of_resident_adapter_needs_no_load():
    table = SlotTable(2)
    first = table.acquire("a")
    again = table.acquire("a")  # while still pinned
    assert again.slot == first.slot
    assert not again.needs_load
    assert again.evicted is None
    assert table.pinned("a") == 2
    table.release("a")
    table.release("a")
    assert table.pinned("a") == 0
    later = table.acquire("a")  # resident but unpinned: still no load
    assert later.slot == first.slot
    assert not later.needs_load


def test_release_counts_down_pins():
    table = SlotTable(1)
    table.acquire("a")
    table.acquire("a")
    table.release("a")
    assert table.pinned("a") == 1
    # still pinned: another adapter cannot take the only slot
    assert table.acquire("b") is None
    table.release("a")
    assert table.pinned("a") == 0
    assert table.acquire("b") is not None


def test_release_of_unpinned_adapter_is_an_error():
    table = SlotTable(2)
    with pytest.raises(ValueError, match="not pinned"):
        table.release("ghost")
    table.acquire("a")
    table.release("a")
    with pytest.raises(ValueError, match="not pinned"):
        table.release("a")


def test_returns_none_when_every_slot_is_pinned():
    table = SlotTable(2)
    table.acquire("a")
    table.acquire("b")
    assert table.acquire("c") is None
    # the failed attempt changed nothing
    assert set(table.resident()) == {"a", "b"}
    assert table.slot_of("c") is None
    assert table.pinned("c") == 0
    assert table.pinned("a") == 1 and table.pinned("b") == 1
    # but a resident pinned adapter can still be acquired again
    assert table.acquire("a") is not None


def test_lru_evicts_least_recently_released_unpinned_adapter():
    table = SlotTable(2)
    slot_a = table.acquire("a").slot
    slot_b = table.acquire("b").slot
    table.release("a")
    table.release("b")
    grant = table.acquire("c")
    assert grant.evicted == "a"
    assert grant.slot == slot_a
    assert grant.needs_load
    assert table.slot_of("a") is None
    assert table.slot_of("b") == slot_b
    assert set(table.resident()) == {"b", "c"}


def test_reuse_refreshes_recency():
    table = SlotTable(2)
    table.acquire("a")
    table.release("a")
    table.acquire("b")
    table.release("b")
    # use "a" again: now "b" is the least recently used
    grant = table.acquire("a")
    assert not grant.needs_load
    table.release("a")
    grant = table.acquire("c")
    assert grant.evicted == "b"
    assert set(table.resident()) == {"a", "c"}


def test_pinned_adapters_are_never_evicted():
    table = SlotTable(3)
    table.acquire("p1")
    table.acquire("free1")
    table.acquire("p2")
    table.release("free1")
    grant = table.acquire("new1")
    assert grant.evicted == "free1"
    # now every slot is pinned again
    assert table.acquire("new2") is None
    for name in ("p1", "p2", "new1"):
        assert table.slot_of(name) is not None
    table.release("new1")
    grant = table.acquire("new2")
    assert grant.evicted == "new1"
    assert table.slot_of("p1") is not None and table.slot_of("p2") is not None


def test_evict_is_refused_while_pinned():
    table = SlotTable(2)
    slot = table.acquire("a").slot
    with pytest.raises(ValueError, match="in use"):
        table.evict("a")
    assert table.slot_of("a") == slot
    assert table.pinned("a") == 1


def test_evict_frees_the_slot_of_an_unpinned_adapter():
    table = SlotTable(1)
    slot = table.acquire("a").slot
    table.release("a")
    assert table.evict("a") == slot
    assert table.slot_of("a") is None
    assert table.resident() == []
    # the freed slot is handed out without evicting anyone
    grant = table.acquire("b")
    assert grant.slot == slot
    assert grant.evicted is None
    table.release("b")
    # an evicted adapter is not in the LRU list any more: acquiring it evicts "b" and loads
    grant = table.acquire("a")
    assert grant.needs_load and grant.evicted == "b"


def test_evict_of_unknown_adapter_returns_none():
    table = SlotTable(2)
    assert table.evict("nope") is None


def test_can_acquire_matches_acquire():
    table = SlotTable(1)
    assert table.can_acquire("a")
    table.acquire("a")
    assert table.can_acquire("a")  # resident
    assert not table.can_acquire("b")
    assert table.acquire("b") is None
    table.release("a")
    assert table.can_acquire("b")
    assert table.acquire("b") is not None


def test_pinned_slots_counts_adapters_held_by_running_requests():
    table = SlotTable(3)
    assert table.pinned_slots() == 0
    table.acquire("a")
    table.acquire("a")  # a second request on the same adapter: still one slot
    table.acquire("b")
    assert table.pinned_slots() == 2
    table.release("a")
    assert table.pinned_slots() == 2
    table.release("a")  # resident, unpinned: an adapter not in a slot may take it
    assert table.pinned_slots() == 1 and "a" in table.resident()
