"""Continuous-batching step scheduler: prefill under a token budget, else decode; preempt on OOM.

Every step first decodes the running sequences (one token each), then spends the rest of the
token budget on prefill: continuing prompts that are part-way through (chunked prefill, a chunk
per step, before anyone new) and admitting waiting ones.  So a long prompt never stalls the
running requests for more than one step's worth of chunk, and only the step that reaches the end
of a prompt samples its first token.

Pure Python: works on Sequence objects, block ids and adapter slots, never on tensors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from loraplex.engine.sequence import Sequence, SequenceStatus, cache_namespace
from loraplex.kvcache.block_allocator import BlockAllocator, blocks_for
from loraplex.kvcache.prefix_cache import block_keys
from loraplex.lora.slot_table import SlotTable

# A request whose adapter finds every device slot pinned by running requests waits, but the
# requests behind it that need no new slot (the base model, an adapter already in a slot) go
# ahead: one tenant's many adapters must not stall everyone queued behind them.  Adapter requests
# may pass a waiting one this many times; then they wait too (their pins could otherwise keep
# every slot busy forever) while base-model requests still go.
SLOT_BYPASS_LIMIT = 64


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int


@dataclass
class ScheduledBatch:
    is_prefill: bool  # has prefill rows (decode rows may ride along: a mixed step)
    seqs: list[Sequence]  # prefill sequences first, then decode sequences
    num_new_tokens: list[int] = field(default_factory=list)  # per seq: tokens computed this step
    num_prefill_seqs: int = 0  # seqs[:num_prefill_seqs] are prefill rows, the rest decode rows
    adapter_loads: list[tuple[str, int]] = field(default_factory=list)  # (adapter, slot) to fill
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, allocator: BlockAllocator, slots: SlotTable) -> None:
        self.cfg = cfg
        self.allocator = allocator
        self.slots = slots
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Sequences whose prompt K/V arrived from a prefill worker: they hold blocks and join the
        # decode batch as soon as a batch slot and their adapter's device slot are free.
        self.ready: deque[Sequence] = deque()
        self._arrivals = 0
        self.prefix_hit_tokens = 0  # prompt tokens whose K/V came from the prefix cache
        self.prefix_query_tokens = 0
        self.preemptions = 0  # since start (a worker's /metrics)

    def add(self, seq: Sequence) -> None:
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.waiting.append(seq)

    def add_prefilled(self, seq: Sequence) -> None:
        """Queue a sequence whose K/V are already in its (allocated) blocks."""
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.ready.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.ready)

    def schedule(self) -> ScheduledBatch | None:
        """Pick the next step's sequences; None when there is nothing to run."""
        loads = self._admit_ready()
        decode = self._schedule_decode()
        # Decode rows take their tokens first; prefill always gets at least one block's worth,
        # so a batch as large as the budget cannot starve the prompts behind it.
        budget = max(self.cfg.max_num_batched_tokens - len(decode.seqs), self.cfg.block_size)
        # After a preemption, do not admit new prompts into the blocks just freed.
        batch = self._schedule_prefill(budget, admit=not decode.preempted)
        batch.num_prefill_seqs = len(batch.seqs)
        batch.is_prefill = bool(batch.seqs)
        batch.seqs += decode.seqs
        batch.num_new_tokens += decode.num_new_tokens
        batch.preempted = decode.preempted
        batch.adapter_loads[:0] = loads
        return batch if batch.seqs or batch.preempted else None

    def _admit_ready(self) -> list[tuple[str, int]]:
        loads: list[tuple[str, int]] = []
        blocked: list[Sequence] = []  # waiting for a device slot, in order
        while self.ready and len(self.running) < self.cfg.max_num_seqs:
            seq = self.ready.popleft()
            if not self._pin_adapter(seq, blocked, loads):
                blocked.append(seq)
                continue
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        self.ready.extendleft(reversed(blocked))
        return loads

    def _pin_adapter(
        self, seq: Sequence, blocked: list[Sequence], loads: list[tuple[str, int]]
    ) -> bool:
        """Give ``seq``'s adapter a device slot (a new one goes in ``loads``); False when it
        must wait (``SLOT_BYPASS_LIMIT``).  The base model needs none."""
        if seq.lora is None:
            return True
        if blocked and (
            self.slots.slot_of(seq.lora) is None or blocked[0].slot_bypassed >= SLOT_BYPASS_LIMIT
        ):
            return False  # no slot came free since; or it has been passed often enough
        grant = self.slots.acquire(seq.lora)
        if grant is None:  # every slot is pinned by running requests
            return False
        if blocked:
            blocked[0].slot_bypassed += 1
        seq.lora_slot = grant.slot
        if grant.needs_load:
            loads.append((seq.lora, grant.slot))
        return True

    def _schedule_prefill(self, budget: int, admit: bool = True) -> ScheduledBatch:
        batch = ScheduledBatch(is_prefill=True, seqs=[])
        tokens = 0
        # Sequences part-way through a chunked prefill go first: they already hold their blocks.
        for seq in sorted(self.running, key=lambda s: s.arrival):
            if seq.num_uncached > 1 and tokens < budget:
                n = min(seq.num_uncached, budget - tokens)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                tokens += n
        admitted: list[Sequence] = []
        blocked: list[Sequence] = []  # waiting for a device slot, in order
        while (
            admit
            and self.waiting
            and tokens < budget
            and len(self.running) + len(admitted) < self.cfg.max_num_seqs
        ):
            seq = self.waiting[0]
            hit = self._cached_prefix(seq)
            need = blocks_for(seq.num_tokens, self.cfg.block_size) - len(hit)
            if not self.allocator.can_allocate_after(hit, need):
                break  # memory is first come, first served: nobody passes
            if not self._pin_adapter(seq, blocked, batch.adapter_loads):
                blocked.append(self.waiting.popleft())
                continue
            seq.block_table = self.allocator.allocate_after(hit, need)
            seq.num_cached = len(hit) * self.cfg.block_size
            self.prefix_hit_tokens += seq.num_cached
            if seq.num_cached_tokens < 0:  # a preempted request keeps its first count
                seq.num_cached_tokens = min(seq.num_cached, len(seq.prompt_token_ids))
            self.prefix_query_tokens += seq.num_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            n = min(seq.num_uncached, budget - tokens)
            admitted.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            tokens += n
        self.waiting.extendleft(reversed(blocked))
        self.running.extend(admitted)
        return batch

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the start of ``seq`` (never its last token, which must run to
        give logits, so the block it lands in is always the sequence's own)."""
        if not self.allocator.caches_prefixes or seq.wants_prompt_logprobs:
            return []  # prompt logprobs need every prompt row's logits: compute them all
        bs = self.cfg.block_size
        reusable = (seq.num_tokens - 1) // bs
        self.extend_block_keys(seq, reusable * bs)
        return self.allocator.lookup(seq.block_keys[:reusable])

    def extend_block_keys(self, seq: Sequence, num_tokens: int) -> None:
        """Make ``seq.block_keys`` cover the full blocks among its first ``num_tokens`` tokens."""
        bs, have = self.cfg.block_size, len(seq.block_keys)
        if num_tokens // bs > have:
            parent = seq.block_keys[-1] if have else None
            tokens = seq.all_token_ids[: num_tokens // bs * bs]
            seq.block_keys += block_keys(tokens, bs, seq.cache_namespace, parent, have * bs)

    def register_computed(self, seq: Sequence, computed: int) -> None:
        """After a step: offer the full blocks among the first ``computed`` tokens (whose K/V are
        now in the cache) for reuse by later sequences."""
        if not self.allocator.caches_prefixes:
            return
        full = computed // self.cfg.block_size
        if full <= seq.registered_blocks:
            return
        self.extend_block_keys(seq, computed)
        for i in range(seq.registered_blocks, full):
            # grouped by adapter alone: removing one forgets its blocks under every salt
            self.allocator.register(
                seq.block_table[i], seq.block_keys[i], cache_namespace(seq.lora)
            )
        seq.registered_blocks = full

    def _schedule_decode(self) -> ScheduledBatch:
        batch = ScheduledBatch(is_prefill=False, seqs=[])
        # Mid-prefill sequences are always continued by the prefill step first; never decoded.
        prefilling = [s for s in self.running if s.num_uncached > 1]
        queue = sorted((s for s in self.running if s.num_uncached <= 1), key=lambda s: s.arrival)
        while queue:
            seq = queue.pop(0)
            need = blocks_for(seq.num_tokens, self.cfg.block_size) - len(seq.block_table)
            while need > 0 and not self.allocator.can_allocate(need):
                # Free the most recent arrival and recompute it later (vLLM's recompute policy).
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            else:
                if need > 0:
                    seq.block_table.extend(self.allocator.allocate(need))
                batch.seqs.append(seq)
        batch.num_new_tokens = [1] * len(batch.seqs)
        self.running = batch.seqs + prefilling
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.preemptions += 1
        # Keep arrival order in the waiting queue so the earliest request resumes first.
        idx = next(
            (i for i, s in enumerate(self.waiting) if s.arrival > seq.arrival), len(self.waiting)
        )
        self.waiting.insert(idx, seq)

    def _release(self, seq: Sequence) -> None:
        if seq.block_table:
            self.allocator.free(seq.block_table)
        seq.block_table = []
        seq.num_cached = 0
        seq.registered_blocks = 0
        if seq.lora is not None and seq.lora_slot >= 0:
            self.slots.release(seq.lora)
        seq.lora_slot = -1

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark finished and give back its blocks and adapter pin."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self._release(seq)
        for queue in (self.running, self.waiting, self.ready):
            if seq in queue:
                queue.remove(seq)
                break

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting, *self.ready):
            if seq.request_id == request_id:
                return seq
        return None
