"""Placement and adapter slots: a request for an adapter a worker does not hold goes to a worker
with a slot to spare rather than to one whose every slot is pinned by running requests, where it
would wait (the worker lets others pass it, ``engine/scheduler.py``, but it still waits).

Each case is decided by the indexed placement and by the scan it replaced, which must agree."""

from __future__ import annotations

import pytest

from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.placement_scan import place_by_scan
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.workers import WorkerRegistry


def _hb(wid: str, pinned: int, adapters: tuple[str, ...] = (), slots: int = 2) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        wid, "both", 0, 1000, 16, 0, 0, max_num_seqs=8, adapters=list(adapters),
        adapter_slots_total=slots, adapter_slots_pinned=pinned,
    )  # fmt: skip


def _registry(*hbs: WorkerHeartbeat, load: dict[str, int] | None = None) -> WorkerRegistry:
    reg = WorkerRegistry(3.0)
    for hb in hbs:
        reg.heartbeat(hb, 0.0)
    for wid, n in (load or {}).items():  # requests already committed: the worker's load
        for i in range(n):
            reg.commit(wid, f"{wid}-r{i}", 16)
    return reg


CACHED = ("none", "index", "plain")  # no prefix view, the prefix index, a plain callable (window)


def _place(reg: WorkerRegistry, adapter: str | None, cached: str) -> str:
    view = PrefixAffinity(capacity_per_worker=100).cached_blocks(adapter, list(range(40)))
    how = {"none": None, "index": view, "plain": view.__call__}[cached]
    got = reg.place(adapter, 40, 80, how)
    assert got == place_by_scan(reg, adapter, 40, 80, how)
    assert got is not None and got.decode == ""
    return got.prefill


@pytest.mark.parametrize("cached", CACHED)
def test_a_new_adapter_goes_where_a_slot_is_free_not_to_the_least_loaded(cached: str) -> None:
    # full: idle, both slots pinned; spare: busier, one slot unpinned
    reg = _registry(_hb("full", pinned=2), _hb("spare", pinned=1), load={"spare": 3})
    assert _place(reg, "sql", cached) == "spare"


@pytest.mark.parametrize("cached", CACHED)
def test_what_needs_no_new_slot_still_goes_to_the_least_loaded(cached: str) -> None:
    reg = _registry(
        _hb("full", pinned=2, adapters=("sql",)), _hb("spare", pinned=0), load={"spare": 3}
    )
    assert _place(reg, None, cached) == "full"  # the base model needs no slot
    assert _place(reg, "sql", cached) == "full"  # it holds sql
    assert _place(reg, "chat", cached) == "spare"


@pytest.mark.parametrize("cached", CACHED)
def test_with_every_worker_full_the_least_loaded_takes_it(cached: str) -> None:
    reg = _registry(_hb("a", pinned=2), _hb("b", pinned=2), load={"a": 2, "b": 1})
    assert _place(reg, "sql", cached) == "b"


def test_a_worker_without_adapter_slots_is_not_counted_full() -> None:
    reg = _registry(_hb("none", pinned=0, slots=0), _hb("full", pinned=2), load={"full": 0})
    assert _place(reg, "sql", "none") == "none"  # slots unreported (0): no reason to avoid it


# ---- between heartbeats: what placement committed counts at once ----------------------------


def _place_and_commit(reg: WorkerRegistry, rid: str, adapter: str | None, cached: str) -> str:
    wid = _place(reg, adapter, cached)
    reg.commit(wid, rid, 80, adapter)  # as the dispatcher does: the adapter with the room
    return wid


@pytest.mark.parametrize("cached", CACHED)
def test_new_adapters_placed_since_the_last_heartbeat_fill_its_slots(cached: str) -> None:
    # Both idle at their last heartbeat (nothing pinned); b is busier, so a wins on load until
    # the two adapters placed on it take both of its slots.
    reg = _registry(_hb("a", pinned=0), _hb("b", pinned=0), load={"b": 4})
    assert _place_and_commit(reg, "r1", "x", cached) == "a"
    assert _place_and_commit(reg, "r2", "y", cached) == "a"
    assert _place_and_commit(reg, "r3", "z", cached) == "b"  # a's slots: x and y, both running


@pytest.mark.parametrize("cached", CACHED)
def test_an_adapter_just_placed_draws_its_next_request_to_the_same_worker(cached: str) -> None:
    reg = _registry(_hb("a", pinned=0), _hb("b", pinned=0))
    assert _place_and_commit(reg, "r1", "x", cached) == "a"
    # b is now less loaded, but a already pages x in: the second request shares its slot
    assert _place_and_commit(reg, "r2", "x", cached) == "a"
    assert _place_and_commit(reg, "r3", "y", cached) == "b"  # another adapter: the least loaded


@pytest.mark.parametrize("cached", CACHED)
def test_a_finished_request_frees_what_it_counted(cached: str) -> None:
    reg = _registry(_hb("a", pinned=0), _hb("b", pinned=0), load={"b": 4})
    _place_and_commit(reg, "r1", "x", cached)
    _place_and_commit(reg, "r2", "y", cached)
    reg.release("a", "r1")  # x is done on a, and a's heartbeat never listed it
    assert _place(reg, "z", cached) == "a"  # a slot to spare again
    _place_and_commit(reg, "r3", "x", cached)  # x: no longer held by a, so the least loaded: a
    reg.release("a", "r3")
    reg.commit("b", "r4", 80, "x")
    reg.release("a", "r2")
    assert _place(reg, "x", cached) == "b"  # b runs x now; a holds nothing


@pytest.mark.parametrize("cached", CACHED)
def test_a_heartbeat_that_does_not_list_a_running_adapter_keeps_it_held(cached: str) -> None:
    reg = _registry(_hb("a", pinned=0), _hb("b", pinned=0))
    _place_and_commit(reg, "r1", "x", cached)
    reg.heartbeat(_hb("a", pinned=0), 0.5)  # sent before a got r1: lists neither x nor its pin
    assert _place(reg, "x", cached) == "a"
    reg.heartbeat(_hb("a", pinned=1, adapters=("x",)), 1.0)
    reg.release("a", "r1")
    assert _place(reg, "x", cached) == "a"  # its heartbeat lists x: still held when r1 is done
    reg.heartbeat(_hb("a", pinned=0), 1.5)  # x evicted
    assert _place(reg, "x", cached) == "a"  # held nowhere: the least loaded (both idle, a first)
    reg.commit("a", "busy", 80)
    assert _place(reg, "x", cached) == "b"


def test_a_shape_change_keeps_the_adapters_running_on_the_worker() -> None:
    reg = _registry(_hb("a", pinned=0), _hb("b", pinned=0))
    _place_and_commit(reg, "r1", "x", "none")
    bigger = WorkerHeartbeat(
        "a", "both", 0, 2000, 16, 0, 0, max_num_seqs=8, adapters=[],
        adapter_slots_total=2, adapter_slots_pinned=0,
    )  # fmt: skip
    reg.heartbeat(bigger, 0.5)  # more KV blocks: the registry re-indexes a
    assert _place(reg, "x", "none") == "a"
