"""The step scheduler's chunked prefill and mixed prefill + decode steps (pure Python)."""

from __future__ import annotations

from tests.scheduler_helpers import check_block_accounting, ids, make, run_step, seq


def test_long_prompt_is_prefilled_in_chunks():
    """25 tokens under a budget of 8: three 8-token chunks, and the last prompt token runs as a
    decode row (same computation as a 1-token chunk), which samples the first output token."""
    sched = make(max_num_batched_tokens=8, block_size=4)
    a = seq("a", 25)
    sched.add(a)
    chunks = []
    for _ in range(3):
        batch = run_step(sched)
        assert batch.is_prefill and batch.seqs == [a]
        chunks.append(batch.num_new_tokens[0])
        assert a.output_token_ids == []  # nothing sampled mid-prompt
        assert len(a.block_table) == 7  # blocks for the whole prompt from the first chunk
    assert chunks == [8, 8, 8] and a.num_cached == 24
    batch = run_step(sched)
    assert not batch.is_prefill and batch.seqs == [a]
    assert a.output_token_ids == [7] and a.num_cached == 25
    check_block_accounting(sched)


def test_unfinished_prefill_goes_before_new_prompts():
    sched = make(max_num_batched_tokens=8)
    sched.add(seq("a", 20))
    sched.add(seq("b", 3))
    steps = [run_step(sched) for _ in range(4)]
    assert [(ids(s.seqs), s.num_new_tokens) for s in steps[:3]] == [
        (["a"], [8]),
        (["a"], [8]),  # b waits: a's second chunk uses the whole budget
        (["a", "b"], [4, 3]),
    ]
    assert not steps[3].is_prefill and ids(steps[3].seqs) == ["a", "b"]
    check_block_accounting(sched)


def test_running_sequences_decode_while_a_long_prompt_is_chunked():
    """A mixed step: b keeps decoding every step while a's 20-token prompt is prefilled in
    chunks of what is left of the budget after b's decode row."""
    sched = make(max_num_batched_tokens=8)
    b = seq("b", 3)
    sched.add(b)
    run_step(sched)  # b prefilled
    sched.add(seq("a", 20))
    steps = [run_step(sched) for _ in range(4)]
    assert [(ids(s.seqs), s.num_new_tokens, s.num_prefill_seqs) for s in steps] == [
        (["a", "b"], [7, 1], 1),
        (["a", "b"], [7, 1], 1),
        (["a", "b"], [6, 1], 1),  # a's last chunk: a samples its first token
        (["b", "a"], [1, 1], 0),
    ]
    assert not steps[3].is_prefill
    assert len(b.output_token_ids) == 5
    check_block_accounting(sched)


def test_prefill_gets_a_block_even_when_decode_rows_fill_the_budget():
    sched = make(max_num_batched_tokens=4, block_size=4, max_num_seqs=8)
    for rid in "abcd":
        sched.add(seq(rid, 1))
    run_step(sched)  # four 1-token prompts
    sched.add(seq("e", 9))
    batch = run_step(sched)
    assert batch.num_prefill_seqs == 1 and batch.num_new_tokens == [4, 1, 1, 1, 1]


def test_decode_keeps_sequences_that_are_mid_prefill():
    """A decode step (possible when nothing can be prefilled) must not drop a sequence that is
    part-way through its prompt from the running set."""
    sched = make(max_num_batched_tokens=100)
    a, b = seq("a", 3), seq("b", 10)
    sched.add(a)
    run_step(sched)
    sched.add(b)
    sched.schedule()  # b admitted whole ...
    b.num_cached = 4  # ... pretend only its first 4 tokens were computed
    batch = sched._schedule_decode()
    assert batch.seqs == [a]
    assert b in sched.running
