"""Driving the pure-Python step scheduler by hand in tests: no model, no tensors."""

from __future__ import annotations

from loraplex.engine.scheduler import Scheduler, SchedulerConfig
from loraplex.engine.sequence import Sequence, SequenceStatus
from loraplex.kvcache.block_allocator import BlockAllocator, blocks_for
from loraplex.lora.slot_table import SlotTable
from loraplex.sampling_params import SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=100)


def make(
    *,
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 1000,
    max_loras: int = 4,
) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs, max_num_batched_tokens, block_size)
    return Scheduler(cfg, BlockAllocator(num_blocks, block_size), SlotTable(max_loras))


def seq(rid: str, n_prompt: int, lora: str | None = None) -> Sequence:
    return Sequence(rid, list(range(10, 10 + n_prompt)), PARAMS, lora)


def run_step(sched: Scheduler):
    """What the engine does after a model step: a prefill chunk short of the prompt's end only
    caches its tokens; every other scheduled sequence gains one token."""
    batch = sched.schedule()
    if batch is not None:
        for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if n < s.num_uncached:
                s.num_cached += n
                continue
            s.num_cached = s.num_tokens
            s.output_token_ids.append(7)
    return batch


def ids(seqs) -> list[str]:
    return [s.request_id for s in seqs]


def check_block_accounting(sched: Scheduler) -> None:
    """Every running sequence owns enough distinct blocks; the allocator agrees on the total."""
    owned = [b for s in sched.running for b in s.block_table]
    assert len(owned) == len(set(owned))
    assert sched.allocator.num_used == len(owned)
    for s in sched.running:
        assert s.status is SequenceStatus.RUNNING
        # positions 0 .. num_tokens-2 hold K/V after the step (the newest token is not written yet)
        assert len(s.block_table) >= blocks_for(s.num_tokens - 1, sched.cfg.block_size)
    for s in sched.waiting:
        assert s.status is SequenceStatus.WAITING
        assert s.block_table == []
