"""HostAdapterCache: the host-memory adapter tier (LRU under a byte budget, pins, counters)."""

from __future__ import annotations

import pytest

from loraplex.lora.host_cache import HostAdapterCache


def filled(budget: int, *entries: tuple[str, int]) -> HostAdapterCache[str]:
    cache: HostAdapterCache[str] = HostAdapterCache(budget)
    for name, nbytes in entries:
        assert cache.put(name, f"v-{name}", nbytes) == []
    return cache


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HostAdapterCache(0)
    with pytest.raises(ValueError):
        HostAdapterCache(-5)


def test_put_get_and_used_bytes() -> None:
    cache = filled(100, ("a", 30), ("b", 40))
    assert cache.used == 70
    assert "a" in cache and "b" in cache and "c" not in cache
    assert cache.get("a") == "v-a"
    assert cache.names() == ["b", "a"]  # oldest first; get touched "a"


def test_evicts_least_recently_used_first() -> None:
    cache = filled(100, ("a", 40), ("b", 40))
    assert cache.get("a") == "v-a"  # b is now the LRU entry
    assert cache.put("c", "v-c", 40) == ["b"]
    assert cache.names() == ["a", "c"]
    assert cache.used == 80
    assert cache.put("d", "v-d", 40) == ["a"]
    assert cache.names() == ["c", "d"]


def test_eviction_frees_as_many_as_needed_in_lru_order() -> None:
    cache = filled(100, ("a", 30), ("b", 30), ("c", 30))
    assert cache.put("big", "v-big", 80) == ["a", "b", "c"]
    assert cache.names() == ["big"]
    assert cache.used == 80


def test_stops_evicting_once_under_budget() -> None:
    cache = filled(100, ("a", 30), ("b", 30), ("c", 30))
    assert cache.put("d", "v-d", 20) == ["a"]  # 110 -> 80: only one victim needed
    assert cache.names() == ["b", "c", "d"]
    assert cache.used == 80


def test_exactly_at_budget_evicts_nothing() -> None:
    cache = filled(100, ("a", 50))
    assert cache.put("b", "v-b", 50) == []
    assert cache.used == 100


def test_replacing_an_entry_adjusts_used_bytes_and_recency() -> None:
    cache = filled(100, ("a", 30), ("b", 30))
    assert cache.put("a", "v-a2", 50) == []
    assert cache.used == 80
    assert cache.names() == ["b", "a"]
    assert cache.get("a") == "v-a2"


def test_pinned_entries_are_never_evicted() -> None:
    cache = filled(100, ("a", 40), ("b", 40))
    cache.pin("a")  # the LRU entry is in use
    assert cache.put("c", "v-c", 40) == ["b"]
    assert cache.names() == ["a", "c"]
    cache.pin("c")
    # Everything else is pinned: the budget is exceeded rather than evicting a pinned entry.
    assert cache.put("d", "v-d", 40) == []
    assert cache.names() == ["a", "c", "d"]
    assert cache.used == 120 > cache.budget


def test_oversize_entry_is_kept_while_alone() -> None:
    cache = filled(100, ("a", 30))
    assert cache.put("huge", "v-huge", 250) == ["a"]
    assert cache.names() == ["huge"]
    assert cache.used == 250 and cache.get("huge") == "v-huge"


def test_oversize_entry_is_kept_next_to_pinned_ones() -> None:
    cache = filled(100, ("a", 30))
    cache.pin("a")
    assert cache.put("huge", "v-huge", 250) == []
    assert set(cache.names()) == {"a", "huge"}


def test_oversize_entry_goes_when_the_next_entry_arrives() -> None:
    cache = filled(100)
    cache.put("huge", "v-huge", 250)
    assert cache.put("a", "v-a", 10) == ["huge"]
    assert cache.names() == ["a"] and cache.used == 10


def test_unpin_triggers_deferred_eviction() -> None:
    cache = filled(100, ("a", 60))
    cache.pin("a")
    assert cache.put("b", "v-b", 60) == []  # over budget: "a" is pinned
    assert cache.used == 120
    assert cache.unpin("a") == ["a"]  # now it may go: it is the LRU entry
    assert cache.names() == ["b"] and cache.used == 60


def test_unpin_evicts_in_lru_order() -> None:
    cache = filled(100, ("a", 40), ("b", 40))
    cache.pin("a")
    cache.pin("b")
    assert cache.put("c", "v-c", 40) == []  # 120 bytes: a and b pinned, c is the newcomer
    # b's pin goes: b is now the least recently used evictable entry, so it goes before c.
    assert cache.unpin("b") == ["b"]
    assert cache.names() == ["a", "c"] and cache.used == 80
    assert cache.unpin("a") == []  # under budget again: nothing to evict


def test_unpinned_entry_over_budget_goes_at_once() -> None:
    cache = filled(100, ("a", 50), ("b", 50))
    cache.pin("a")
    cache.pin("b")
    cache.pin("c")
    assert cache.put("c", "v-c", 50) == []  # everything pinned: 150 bytes
    assert cache.unpin("c") == ["c"]  # the only evictable entry, and the cache is over budget
    assert cache.names() == ["a", "b"] and cache.used == 100


def test_pins_are_counted() -> None:
    cache = filled(100, ("a", 60))
    cache.pin("a")
    cache.pin("a")
    assert cache.pinned("a") == 2
    cache.pin("b")
    cache.put("b", "v-b", 60)
    cache.pin("b")
    assert cache.unpin("a") == []  # one pin left on each
    assert cache.unpin("b") == []
    assert "a" in cache and cache.pinned("a") == 1 and cache.pinned("b") == 1
    assert cache.unpin("a") == ["a"]  # a's last pin: the LRU entry goes
    assert cache.pinned("a") == 0 and cache.names() == ["b"]


def test_unpin_without_pin_raises() -> None:
    cache = filled(100, ("a", 10))
    with pytest.raises(ValueError):
        cache.unpin("a")
    cache.pin("a")
    cache.unpin("a")
    with pytest.raises(ValueError):
        cache.unpin("a")


def test_pin_before_put_protects_the_new_entry() -> None:
    # The pager pins a key it is about to install; the pin must hold once the entry arrives.
    cache = filled(100, ("a", 60))
    cache.pin("b")
    assert cache.put("b", "v-b", 60) == ["a"]
    assert cache.put("c", "v-c", 60) == []  # b is pinned, c is the newcomer
    assert cache.names() == ["b", "c"]


def test_drop() -> None:
    cache = filled(100, ("a", 30), ("b", 30))
    assert cache.drop("a") is True
    assert cache.drop("a") is False
    assert cache.names() == ["b"] and cache.used == 30


def test_hit_and_miss_counts() -> None:
    cache = filled(100, ("a", 10))
    assert (cache.hits, cache.misses) == (0, 0)
    assert cache.get("a") == "v-a"
    assert cache.get("a") == "v-a"
    assert cache.get("nope") is None
    assert (cache.hits, cache.misses) == (2, 1)
    # Membership tests, names() and pins do not count as lookups.
    assert "a" in cache and "nope" not in cache
    cache.names()
    cache.pin("a")
    cache.unpin("a")
    assert (cache.hits, cache.misses) == (2, 1)
    cache.drop("a")
    assert cache.get("a") is None
    assert (cache.hits, cache.misses) == (2, 2)
