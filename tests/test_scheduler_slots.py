"""Adapter device slots in the step scheduler: a request whose adapter finds every slot pinned
waits without stalling the requests behind it that need no new slot (the base model, an adapter
already in a slot); adapter requests pass it at most ``SLOT_BYPASS_LIMIT`` times, so it gets the
next free slot and is never starved; memory stays first come, first served."""

from __future__ import annotations

from loraplex.engine.scheduler import SLOT_BYPASS_LIMIT
from loraplex.engine.sequence import SequenceStatus
from tests.scheduler_helpers import check_block_accounting, ids, make, run_step, seq


def test_base_and_resident_requests_pass_one_waiting_for_a_slot() -> None:
    sched = make(max_loras=2)
    for s in (seq("x1", 2, lora="x"), seq("y1", 2, lora="y")):  # both slots pinned
        sched.add(s)
    run_step(sched)
    blocked, base, resident = seq("z1", 2, lora="z"), seq("b1", 2), seq("x2", 2, lora="x")
    for s in (blocked, base, resident):
        sched.add(s)
    batch = run_step(sched)
    assert ids(batch.seqs[: batch.num_prefill_seqs]) == ["b1", "x2"]  # before: neither ran
    assert ids(sched.waiting) == ["z1"] and blocked.status is SequenceStatus.WAITING
    assert blocked.block_table == [] and blocked.slot_bypassed == 1
    check_block_accounting(sched)
    for rid in ("y1",):  # y's last request ends: its slot is z's, first in line
        sched.finish(next(s for s in sched.running if s.request_id == rid), "stop")
    late = seq("w1", 2, lora="w")  # asks for a new slot too, but after z
    sched.add(late)
    batch = run_step(sched)
    assert "z1" in ids(batch.seqs) and "w1" not in ids(batch.seqs)
    assert dict(batch.adapter_loads) == {"z": blocked.lora_slot}
    assert ids(sched.waiting) == ["w1"]


def test_a_waiting_request_is_passed_a_bounded_number_of_times() -> None:
    sched = make(max_loras=1, max_num_seqs=4 * SLOT_BYPASS_LIMIT, num_blocks=4096)
    sched.add(seq("x0", 2, lora="x"))
    run_step(sched)  # x holds the only slot
    blocked = seq("z", 2, lora="z")
    sched.add(blocked)
    for i in range(SLOT_BYPASS_LIMIT + 3):
        sched.add(seq(f"x{i + 1}", 2, lora="x"))
    sched.add(seq("base", 2))
    batch = run_step(sched)
    passed = [r for r in ids(batch.seqs[: batch.num_prefill_seqs]) if r.startswith("x")]
    assert len(passed) == SLOT_BYPASS_LIMIT and blocked.slot_bypassed == SLOT_BYPASS_LIMIT
    assert "base" in ids(batch.seqs)  # the base model still goes
    assert ids(sched.waiting)[:1] == ["z"] and len(sched.waiting) == 4
    for s in [s for s in sched.running if s.lora == "x"]:  # x's pins drain, no new ones come
        sched.finish(s, "stop")
    batch = run_step(sched)
    assert ids(batch.seqs)[0] == "z" and dict(batch.adapter_loads) == {"z": 0}


def test_memory_is_still_first_come_first_served() -> None:
    sched = make(max_loras=1, num_blocks=4, block_size=4)
    sched.add(seq("x1", 4, lora="x"))
    run_step(sched)  # one block of four used, x pinned
    big, small = seq("big", 16), seq("small", 2)  # big needs more blocks than are free
    sched.add(big)
    sched.add(small)
    batch = run_step(sched)
    assert ids(batch.seqs) == ["x1"] and ids(sched.waiting) == ["big", "small"]


def test_decode_side_ready_requests_pass_one_waiting_for_a_slot() -> None:
    sched = make(max_loras=1)
    sched.add(seq("x1", 2, lora="x"))
    run_step(sched)
    prefilled = []
    for rid, lora in (("z", "z"), ("b", None), ("x2", "x")):
        s = seq(rid, 2, lora=lora)
        s.block_table = sched.allocator.allocate(1)
        s.num_cached = s.num_tokens - 1
        s.output_token_ids.append(7)
        sched.add_prefilled(s)
        prefilled.append(s)
    batch = run_step(sched)
    assert {"b", "x2"} <= set(ids(batch.seqs)) and "z" not in ids(batch.seqs)
    assert ids(sched.ready) == ["z"] and prefilled[0].slot_bypassed == 1
