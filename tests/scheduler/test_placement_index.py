"""Indexed placement (``WorkerRegistry.place``) against the scan it replaced (``placement_scan``).

On clusters within the index's exact bounds (at most ``SCAN`` workers per role, ``ADAPTER_EXACT``
holders per adapter, ``HOLDERS`` holders per prefix block) both choose the same workers, step by
step, while requests are committed and released, workers join, drain, turn suspect, change their
adapters and die.  Beyond the bounds the choice is a bounded sample, checked for its properties.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from loraplex.prefix_keys import prefix_keys
from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.placement import ADAPTER_SAMPLE, SCAN, Placer
from loraplex.scheduler.placement_scan import place_by_scan
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.workers import WorkerRegistry

ADAPTERS = [f"a{i}" for i in range(5)]
PROMPTS = [[1000 * p + i for i in range(80)] for p in range(4)]  # shared leading blocks per p


def _hb(rng: random.Random, wid: str, role: str, draining: bool = False) -> WorkerHeartbeat:
    slots = rng.choice([0, 2, 4])
    return WorkerHeartbeat(
        wid,
        role,
        free_blocks=0,
        total_blocks=rng.choice([20, 40, 200]),
        block_size=rng.choice([16, 16, 32]),
        running=0,
        waiting=0,
        max_num_seqs=rng.choice([2, 4, 8]),
        adapters=rng.sample(ADAPTERS, rng.randint(0, 3)),
        draining=draining,
        adapter_slots_total=slots,
        adapter_slots_pinned=rng.randint(0, slots),  # all pinned: an absent adapter would wait
    )


def _replay(seed: int, steps: int = 400) -> int:
    rng = random.Random(seed)
    roles = rng.choice([["both"], ["prefill", "decode"], ["prefill", "decode", "both"]])
    reg = WorkerRegistry(3.0, prefix_balance=rng.choice([0.0, 0.25, 0.5]))
    aff = PrefixAffinity(capacity_per_worker=rng.choice([6, 1000]))
    n = rng.randint(len(roles), 8)
    hbs = {
        f"w{i}": _hb(rng, f"w{i}", roles[i] if i < len(roles) else rng.choice(roles))
        for i in range(n)
    }
    for hb in hbs.values():
        reg.heartbeat(hb, 0.0)
    live: list[tuple[str, list[str]]] = []
    placed = 0
    for step in range(steps):
        r = rng.random()
        if r < 0.5:
            prompt = rng.choice(PROMPTS)[: rng.randint(1, 80)]
            adapter = rng.choice([None, *ADAPTERS])
            total = len(prompt) + rng.randint(1, 200)
            plain = rng.random() < 0.3
            view = aff.cached_blocks(adapter, prompt)
            # a plain callable (no holders()): the window walk instead of the prefix index
            cached = view.__call__ if plain else view
            if rng.random() < 0.2:
                cached = None
            got = reg.place(adapter, len(prompt), total, cached)
            want = place_by_scan(reg, adapter, len(prompt), total, cached)
            assert got == want, f"step {step}: indexed {got} != scan {want}"
            if got is not None:
                placed += 1
                rid = f"r{step}"
                wids = [got.prefill] + ([got.decode] if got.decode else [])
                reg.commit(got.prefill, rid, len(prompt) if got.decode else total, adapter)
                if got.decode:
                    reg.commit(got.decode, rid, total, adapter)
                for wid in wids:
                    aff.record(wid, prefix_keys(adapter, prompt))
                live.append((rid, wids))
        elif r < 0.8 and live:
            rid, wids = live.pop(rng.randrange(len(live)))
            for wid in wids:
                reg.release(wid, rid)
        elif r < 0.85:
            reg.suspect(rng.choice(sorted(hbs)))
        elif r < 0.985:  # a heartbeat: same shape, new adapters, draining, or a new role
            wid = rng.choice(sorted(hbs))
            old = hbs[wid]
            kind = rng.random()
            if kind < 0.4:
                pinned = rng.randint(0, old.adapter_slots_total)
                hb = WorkerHeartbeat(
                    **{
                        **old.__dict__,
                        "adapters": rng.sample(ADAPTERS, 2),
                        "adapter_slots_pinned": pinned,
                    }
                )
            elif kind < 0.6:
                hb = WorkerHeartbeat(**{**old.__dict__, "draining": not old.draining})
            elif kind < 0.7:
                hb = _hb(rng, wid, rng.choice(roles))
            else:
                hb = old
            hbs[wid] = hb
            if wid in reg.workers or rng.random() < 0.5:
                if wid not in reg.workers:
                    aff.forget(wid)
                reg.heartbeat(hb, float(step))
        elif reg.workers:  # a worker dies
            wid = rng.choice(sorted(reg.workers))
            reg.workers[wid].last_seen = -100.0
            reg.expire(0.0)
            aff.forget(wid)
    return placed


@pytest.mark.parametrize("seed", [random.Random(7 + i).randrange(1 << 30) for i in range(16)])
def test_indexed_placement_chooses_as_the_scan_on_small_clusters(seed: int) -> None:
    assert _replay(seed) > 10


def test_can_serve_and_fit_follow_joins_drains_and_deaths() -> None:
    reg = WorkerRegistry(3.0)
    assert not reg.can_serve()
    reg.heartbeat(WorkerHeartbeat("p", "prefill", 0, 10, 16, 0, 0, 4), 0.0)
    assert not reg.can_serve()
    reg.heartbeat(WorkerHeartbeat("d", "decode", 0, 100, 16, 0, 0, 4), 0.0)
    assert reg.can_serve() and reg.could_ever_fit(160, 1600)
    assert not reg.could_ever_fit(161, 1600) and not reg.could_ever_fit(160, 1601)
    reg.heartbeat(WorkerHeartbeat("d", "decode", 0, 100, 16, 0, 0, 4, draining=True), 1.0)
    assert not reg.can_serve()
    reg.heartbeat(WorkerHeartbeat("b", "both", 0, 200, 16, 0, 0, 4), 1.0)
    assert reg.can_serve() and reg.could_ever_fit(3200, 3200)
    reg.expire(100.0)
    assert not reg.can_serve() and not reg.workers


def _big_cluster(n: int, holders: int) -> WorkerRegistry:
    reg = WorkerRegistry(3.0, seed=1)
    for i in range(n):
        adapters = ["hot"] if i < holders else []
        reg.heartbeat(WorkerHeartbeat(f"w{i:04d}", "both", 0, 1000, 16, 0, 0, 8, adapters), 0.0)
    return reg


def test_many_holders_of_an_adapter_are_sampled_and_still_preferred() -> None:
    """500 workers hold the adapter: one of them is chosen (power of two choices), and the
    least loaded of the sampled pair, so load still spreads over the holders."""
    reg = _big_cluster(1000, 500)
    seen = set()
    for i in range(2000):
        got = reg.place("hot", 10, 20)
        assert got is not None and int(got.prefill[1:]) < 500  # a holder, never a non-holder
        reg.commit(got.prefill, f"r{i}", 20)
        seen.add(got.prefill)
    loads = sorted(len(reg.workers[f"w{i:04d}"].requests) for i in range(500))
    assert len(seen) > 400
    # 2000 requests on 500 holders, 4 each on average: two choices keep the busiest near it
    # (one random choice would give about 11 on some holder)
    assert loads[-1] <= 8
    assert ADAPTER_SAMPLE == 2


def test_walk_skips_workers_without_kv_room() -> None:
    """The least loaded workers lack KV room for a long request: it goes to one that has it
    (within the SCAN walk, or the worker with the most free blocks beyond it)."""
    reg = _big_cluster(3 * SCAN, 0)
    for i in range(3 * SCAN - 1):  # every worker but the last: 1 request using 990 of 1000 blocks
        reg.commit(f"w{i:04d}", f"big{i}", 990 * 16)
    # nobody is idle but the last, which sorts last by id and by nothing else
    got = reg.place(None, 100, 16 * 500)
    assert got is not None and got.prefill == f"w{3 * SCAN - 1:04d}"
    reg.commit(got.prefill, "long", 16 * 995)
    assert reg.place(None, 100, 16 * 500) is None  # nobody has 500 free blocks now


def test_stale_heap_entries_are_compacted() -> None:
    reg = _big_cluster(10, 0)
    for i in range(5000):
        reg.commit(f"w{i % 10:04d}", f"r{i}", 16)
        reg.place(None, 10, 20)
        reg.release(f"w{i % 10:04d}", f"r{i}")
    idx = reg._roles["both"]
    assert len(idx.by_load) <= 64 + 2 * 10 and len(idx.by_free) <= 64 + 2 * 10


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_prefix_holder_shortcut_chooses_as_the_full_path(seed: int) -> None:
    """Beyond the scan's bounds (200 workers, prefixes held by more than ``HOLDERS``): the
    one-pass choice among a prompt's prefix holders is the one the full path makes, decision by
    decision, while requests come and go (it must also have been taken, and returned a holder)."""
    rng = random.Random(seed)
    reg = WorkerRegistry(3.0, prefix_balance=rng.choice([0.0, 0.25, 0.5]), seed=seed)
    for i in range(200):
        adapters = rng.sample(ADAPTERS, rng.randint(0, 3))
        hb = WorkerHeartbeat(f"w{i:04d}", "both", 0, rng.choice([60, 400]), 16, 0, 0, 8, adapters)
        reg.heartbeat(hb, 0.0)
    reg._flush()
    # the placer without its one-pass prefix-holder shortcut: the reference for it
    reference = Placer(
        reg.workers, reg._roles, reg._holders, reg.prefix_balance, seed, prefix_shortcut=False
    )
    aff = PrefixAffinity()
    live: list[tuple[str, str]] = []
    shortcut = 0
    for step in range(3000):
        if rng.random() < 0.05:  # a worker pages adapters in and out
            hb = reg.workers[f"w{rng.randrange(200):04d}"].hb
            reg.heartbeat(replace(hb, adapters=rng.sample(ADAPTERS, rng.randint(0, 2))), 0.0)
        if live and (rng.random() < 0.45 or len(live) > 1400):
            rid, wid = live.pop(rng.randrange(len(live)))
            reg.release(wid, rid)
            continue
        prompt = rng.choice(PROMPTS)[: rng.randint(17, 80)] + [step, step + 1]
        adapter = rng.choice([None, *ADAPTERS])
        view = aff.cached_blocks(adapter, prompt)
        total = len(prompt) + rng.randint(1, 300)
        got = reg.place(adapter, len(prompt), total, view)  # flushes the indexes first
        taken = reg._placer._prefix_holder("both", adapter, reg._roles["both"], total, view)
        want = reference.place(adapter, len(prompt), total, view)
        assert got == want, f"step {step}: shortcut {got} != full path {want}"
        if taken is not None:
            shortcut += 1
            assert got is not None and got.prefill == taken.hb.worker_id
        if got is not None:
            reg.commit(got.prefill, f"r{step}", total)
            aff.record(got.prefill, view.keys())
            live.append((f"r{step}", got.prefill))
    assert shortcut > 300


def test_the_most_free_blocks_fallback_still_finds_workers_a_commit_changed() -> None:
    """Beyond the ``SCAN`` least loaded workers (all short of KV blocks here) placement takes
    the worker with the most free blocks.  A commit does not re-push a worker (its heap entry is
    renewed when it surfaces), so after commits on ``x`` and ``y`` both must still be found, as
    the scan finds them."""
    reg = WorkerRegistry(3.0)
    for i in range(SCAN):  # least loaded (1 of 4 slots), 1 free block each
        reg.heartbeat(WorkerHeartbeat(f"w{i:02d}", "both", 0, 10, 16, 0, 0, 4), 0.0)
        reg.commit(f"w{i:02d}", f"big{i}", 9 * 16)
    for wid, each in (("x", 1), ("y", 2)):  # busier (2 of 4 slots), 8 and 6 free blocks
        reg.heartbeat(WorkerHeartbeat(wid, "both", 0, 10, 16, 0, 0, 4), 0.0)
        for k in range(2):
            reg.commit(wid, f"{wid}{k}", each * 16)
    chosen = []
    for step in range(3):  # 3 blocks each: x (8 free), then y (6 > 5), then x (5 > 3)
        want = place_by_scan(reg, None, 3 * 16, 3 * 16)
        got = reg.place(None, 3 * 16, 3 * 16)
        assert got == want, f"step {step}: {got} != scan {want}"
        assert got is not None
        reg.commit(got.prefill, f"r{step}", 3 * 16)
        chosen.append(got.prefill)
    assert chosen == ["x", "y", "x"]
