"""The pure-Python scheduler, driven with hand-made Sequences (no model, no tensors)."""

from __future__ import annotations

import pytest

from loraplex.engine.sequence import SequenceStatus
from loraplex.kvcache.block_allocator import blocks_for
from tests.scheduler_helpers import check_block_accounting, ids, make, run_step, seq


def test_nothing_to_do_returns_none():
    sched = make()
    assert sched.schedule() is None
    assert not sched.has_unfinished()


def test_add_assigns_increasing_arrival_and_waits():
    sched = make()
    a, b = seq("a", 3), seq("b", 3)
    sched.add(a)
    sched.add(b)
    assert a.arrival < b.arrival
    assert a.status is SequenceStatus.WAITING
    assert ids(sched.waiting) == ["a", "b"]
    assert sched.has_unfinished()
    assert sched.find("b") is b
    assert sched.find("zzz") is None


def test_prefill_allocates_blocks_for_the_whole_prompt():
    sched = make(block_size=4)
    a = seq("a", 9)
    sched.add(a)
    batch = sched.schedule()
    assert batch.is_prefill
    assert batch.seqs == [a]
    assert a.status is SequenceStatus.RUNNING
    assert len(a.block_table) == 3  # ceil(9 / 4)
    assert sched.allocator.num_used == 3
    assert sched.running == [a]
    assert not sched.waiting


def test_prefill_respects_token_budget():
    sched = make(max_num_batched_tokens=10)
    for rid in ("a", "b", "c"):
        sched.add(seq(rid, 4))
    first = run_step(sched)
    assert first.is_prefill
    assert ids(first.seqs) == ["a", "b", "c"]  # c gets the 2 tokens left of the budget
    assert first.num_new_tokens == [4, 4, 2]
    assert not sched.waiting
    second = run_step(sched)
    assert second.is_prefill  # c's last chunk, with a and b decoding in the same step
    assert ids(second.seqs) == ["c", "a", "b"] and second.num_prefill_seqs == 1
    assert second.num_new_tokens == [2, 1, 1]
    third = run_step(sched)
    assert not third.is_prefill
    assert ids(third.seqs) == ["a", "b", "c"]


def test_prompt_exactly_filling_budget_is_admitted():
    sched = make(max_num_batched_tokens=8)
    sched.add(seq("a", 8))
    sched.add(seq("b", 1))
    batch = sched.schedule()
    assert ids(batch.seqs) == ["a"]


def test_prefill_respects_max_num_seqs():
    sched = make(max_num_seqs=2)
    for rid in ("a", "b", "c"):
        sched.add(seq(rid, 2))
    first = run_step(sched)
    assert ids(first.seqs) == ["a", "b"]
    second = run_step(sched)
    assert not second.is_prefill  # c must wait: two sequences are already running
    assert ids(second.seqs) == ["a", "b"]
    assert ids(sched.waiting) == ["c"]
    sched.finish(sched.running[0], "length")
    third = run_step(sched)
    assert third.is_prefill
    assert ids(third.seqs) == ["c", "b"]  # c's prefill; b keeps decoding in the same step
    assert third.num_prefill_seqs == 1 and third.num_new_tokens == [2, 1]
    assert len(sched.running) == 2


def test_decode_after_prefill_grows_block_tables_at_block_boundaries():
    sched = make(block_size=4)
    a = seq("a", 3)
    sched.add(a)
    run_step(sched)  # prefill: 3 prompt tokens -> 1 block, then a 4th token is sampled
    assert len(a.block_table) == 1
    batch = run_step(sched)  # decode the 4th token (position 3): still block 0
    assert not batch.is_prefill and batch.seqs == [a]
    assert len(a.block_table) == 1
    run_step(sched)  # decode position 4: needs a second block
    assert len(a.block_table) == 2
    for _ in range(4):
        run_step(sched)
        check_block_accounting(sched)
    # positions 0..8 were written: ceil(9/4) = 3 blocks
    assert a.num_tokens == 10
    assert len(a.block_table) == blocks_for(a.num_tokens - 1, 4)
    assert sched.allocator.num_used == len(a.block_table)


def test_prefill_waits_when_blocks_run_out():
    sched = make(num_blocks=4, block_size=4)
    sched.add(seq("a", 12))  # 3 blocks
    sched.add(seq("b", 8))  # 2 blocks: does not fit next to a
    batch = sched.schedule()
    assert ids(batch.seqs) == ["a"]
    assert ids(sched.waiting) == ["b"]
    assert sched.allocator.num_free == 1


def test_preemption_takes_latest_arrival_and_returns_its_blocks():
    sched = make(num_blocks=4, block_size=4, max_num_seqs=3)
    a, b, c, d = seq("a", 4), seq("b", 4), seq("c", 4), seq("d", 4)
    for s in (a, b, c, d):
        sched.add(s)
    run_step(sched)  # prefill a, b, c (1 block each); d waits on max_num_seqs
    assert ids(sched.running) == ["a", "b", "c"]
    assert ids(sched.waiting) == ["d"]
    assert sched.allocator.num_free == 1
    c_blocks = list(c.block_table)
    # Every sequence now has 5 tokens and needs a second block; there is only one free block.
    batch = run_step(sched)
    assert not batch.is_prefill
    assert ids(batch.preempted) == ["c"]
    assert ids(batch.seqs) == ["a", "b"]
    assert c.status is SequenceStatus.WAITING
    assert c.block_table == [] and c.num_cached == 0
    assert c.num_preemptions == 1
    assert a.num_preemptions == 0 and b.num_preemptions == 0
    # c's block went back to the pool and was handed to a running sequence
    assert set(c_blocks) <= set(b.block_table) | set(a.block_table)
    assert len(a.block_table) == 2 and len(b.block_table) == 2
    # back in the waiting queue ahead of the later arrival d
    assert ids(sched.waiting) == ["c", "d"]
    assert ids(sched.running) == ["a", "b"]
    # tokens generated before preemption are kept (they are recomputed, not resampled)
    assert c.output_token_ids == [7]
    check_block_accounting(sched)


def test_preemption_victims_are_taken_newest_first():
    sched = make(num_blocks=6, block_size=2, max_num_seqs=8)
    seqs = [seq(f"s{i}", 2) for i in range(6)]
    for s in seqs:
        sched.add(s)
    run_step(sched)  # all six prefilled, one block each, pool exhausted
    assert sched.allocator.num_free == 0
    batch = run_step(sched)  # each needs a second block now
    # s0 needs 1 block: preempt s5; s1 needs 1: preempt s4; s2 needs 1: preempt s3
    assert ids(batch.preempted) == ["s5", "s4", "s3"]
    assert ids(batch.seqs) == ["s0", "s1", "s2"]
    assert ids(sched.waiting) == ["s3", "s4", "s5"]  # arrival order, not preemption order
    check_block_accounting(sched)


def test_running_sequence_preempts_itself_when_it_is_the_newest():
    sched = make(num_blocks=3, block_size=2)
    a, b = seq("a", 4), seq("b", 2)
    sched.add(a)
    sched.add(b)
    run_step(sched)  # a: 2 blocks, b: 1 block, pool exhausted
    # a has 5 tokens and needs a third block; b is the newest and is preempted to make room
    batch = run_step(sched)
    assert ids(batch.preempted) == ["b"]
    assert ids(batch.seqs) == ["a"]
    # b now needs 2 blocks for its 3 tokens but none are free, so a keeps decoding alone
    batch = run_step(sched)
    assert ids(batch.seqs) == ["a"]
    # a has 7 tokens: position 6 needs a 4th block that does not exist. a is the only
    # running sequence, so it preempts itself and gives all its blocks back.
    batch = run_step(sched)
    assert ids(batch.preempted) == ["a"]
    assert batch.seqs == []
    assert a.status is SequenceStatus.WAITING
    assert a.num_preemptions == 1 and b.num_preemptions == 1
    assert sched.allocator.num_free == 3
    assert sched.running == []
    assert ids(sched.waiting) == ["a", "b"]


def test_preempted_sequence_is_prefilled_again_with_all_its_tokens():
    sched = make(num_blocks=4, block_size=4, max_num_seqs=3)
    a, b, c = seq("a", 4), seq("b", 4), seq("c", 4)
    for s in (a, b, c):
        sched.add(s)
    run_step(sched)
    batch = run_step(sched)
    assert ids(batch.preempted) == ["c"]
    sched.finish(a, "stop")
    assert sched.allocator.num_free == 2
    batch = run_step(sched)
    assert batch.is_prefill
    assert batch.seqs[: batch.num_prefill_seqs] == [c]
    assert c.status is SequenceStatus.RUNNING
    assert c.num_tokens == 6  # 4 prompt + the token from before preemption + the new one
    assert len(c.block_table) == blocks_for(5, 4)
    check_block_accounting(sched)


def test_preemption_counts_accumulate():
    sched = make(num_blocks=2, block_size=2)
    a, b = seq("a", 2), seq("b", 2)
    sched.add(a)
    sched.add(b)
    total = 0
    for _ in range(12):
        batch = run_step(sched)
        if batch is None:
            break
        total += len(batch.preempted)
        check_block_accounting(sched)
        for s in list(sched.running):
            if s.num_tokens >= 4:  # blocks_for(4 - 1, 2) == 2 == the whole pool
                sched.finish(s, "length")
    assert not sched.has_unfinished()
    assert total >= 1
    assert a.num_preemptions + b.num_preemptions == total
    assert b.num_preemptions >= 1  # the later arrival is the one pushed out first


def test_never_schedules_more_blocks_than_exist():
    sched = make(num_blocks=10, block_size=2, max_num_seqs=5, max_num_batched_tokens=50)
    for i in range(7):
        sched.add(seq(f"r{i}", 1 + i % 3))
    for _ in range(200):
        batch = run_step(sched)
        if batch is None:
            break
        check_block_accounting(sched)
        assert len(sched.running) <= 5
        for s in list(sched.running):
            if len(s.output_token_ids) >= 8:
                sched.finish(s, "length")
    assert not sched.has_unfinished()
    assert sched.allocator.num_free == 10


def test_adapter_loads_are_reported_once_per_slot_fill():
    sched = make(max_loras=2)
    sched.add(seq("a", 2, lora="x"))
    sched.add(seq("b", 2, lora="x"))
    sched.add(seq("c", 2, lora="y"))
    sched.add(seq("d", 2))
    batch = sched.schedule()
    assert ids(batch.seqs) == ["a", "b", "c", "d"]
    loads = dict(batch.adapter_loads)
    assert len(batch.adapter_loads) == 2
    assert set(loads) == {"x", "y"}
    assert loads["x"] != loads["y"]
    by_id = {s.request_id: s for s in batch.seqs}
    assert by_id["a"].lora_slot == by_id["b"].lora_slot == loads["x"]
    assert by_id["c"].lora_slot == loads["y"]
    assert by_id["d"].lora_slot == -1
    assert sched.slots.pinned("x") == 2 and sched.slots.pinned("y") == 1


def test_request_waits_while_all_adapter_slots_are_pinned():
    sched = make(max_loras=1)
    a, b = seq("a", 2, lora="x"), seq("b", 2, lora="y")
    sched.add(a)
    sched.add(b)
    batch = run_step(sched)
    assert ids(batch.seqs) == ["a"]
    assert batch.adapter_loads == [("x", a.lora_slot)]
    assert ids(sched.waiting) == ["b"]
    assert b.lora_slot == -1 and b.block_table == []
    batch = run_step(sched)  # b still cannot get a slot: a decodes
    assert not batch.is_prefill and batch.seqs == [a]
    assert sched.allocator.num_used == len(a.block_table)  # b holds no blocks while waiting
    assert b.status is SequenceStatus.WAITING
    sched.finish(a, "stop")
    assert sched.slots.pinned("x") == 0
    batch = run_step(sched)
    assert batch.is_prefill and batch.seqs == [b]
    assert batch.adapter_loads == [("y", b.lora_slot)]
    assert sched.slots.slot_of("x") is None  # evicted to make room


def test_resident_adapter_is_not_loaded_again():
    sched = make(max_loras=2)
    a = seq("a", 2, lora="x")
    sched.add(a)
    first = sched.schedule()
    slot = a.lora_slot
    assert first.adapter_loads == [("x", slot)]
    sched.finish(a, "stop")
    b = seq("b", 2, lora="x")
    sched.add(b)
    second = sched.schedule()
    assert second.seqs == [b]
    assert second.adapter_loads == []
    assert b.lora_slot == slot


def test_preemption_releases_adapter_pin():
    sched = make(num_blocks=2, block_size=2, max_loras=2)
    a, b = seq("a", 2, lora="x"), seq("b", 2, lora="y")
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert sched.slots.pinned("y") == 1
    batch = run_step(sched)
    assert ids(batch.preempted) == ["b"]
    assert sched.slots.pinned("y") == 0
    assert b.lora_slot == -1
    assert sched.slots.pinned("x") == 1


def test_finish_releases_blocks_and_pins():
    sched = make(max_loras=2)
    a, b = seq("a", 5, lora="x"), seq("b", 3, lora="x")
    sched.add(a)
    sched.add(b)
    run_step(sched)
    run_step(sched)
    assert sched.slots.pinned("x") == 2
    used = sched.allocator.num_used
    a_blocks = len(a.block_table)
    assert a_blocks > 0
    sched.finish(a, "length")
    assert a.status is SequenceStatus.FINISHED
    assert a.finished
    assert a.finish_reason == "length"
    assert a.block_table == [] and a.lora_slot == -1
    assert sched.allocator.num_used == used - a_blocks
    assert sched.slots.pinned("x") == 1
    assert sched.running == [b]
    sched.finish(b, "stop")
    assert sched.allocator.num_used == 0
    assert sched.slots.pinned("x") == 0
    assert sched.slots.slot_of("x") is not None  # stays resident (LRU) for the next request
    assert not sched.has_unfinished()
    assert sched.schedule() is None


def test_finish_of_waiting_sequence_removes_it():
    sched = make(max_num_seqs=1)
    a, b = seq("a", 2), seq("b", 2)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.finish(b, "abort")
    assert b.finish_reason == "abort"
    assert ids(sched.waiting) == []
    assert sched.find("b") is None
    assert sched.allocator.num_used == len(a.block_table)


@pytest.mark.parametrize("lora", [None, "x"])
def test_finish_after_preemption_does_not_double_release(lora):
    sched = make(num_blocks=2, block_size=2, max_loras=1)
    a, b = seq("a", 2, lora=lora), seq("b", 2, lora=lora)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    batch = run_step(sched)
    assert ids(batch.preempted) == ["b"]
    sched.finish(b, "abort")  # aborting a preempted (waiting) request
    sched.finish(a, "abort")
    assert sched.allocator.num_free == 2
    assert not sched.has_unfinished()
    if lora is not None:
        assert sched.slots.pinned(lora) == 0
