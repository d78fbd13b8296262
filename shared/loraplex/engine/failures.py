"""Requests a step cannot serve: rows whose logits are not finite, and steps that raise.

Either way only the requests concerned end, each with an error output (``finish_reason``
"error"); their blocks, adapter pins and slots are freed and the engine serves everyone else.
Only errors that leave the device itself in doubt are fatal (``is_fatal``): they propagate, and
a worker exits so that its supervisor restarts it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from loraplex.engine.outputs import StepOutput
from loraplex.engine.runner import PromptScores
from loraplex.engine.scheduler import ScheduledBatch, Scheduler
from loraplex.engine.sequence import Sequence, cache_namespace
from loraplex.kvcache.block_allocator import BlockAllocator
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.lora.slot_table import SlotTable
from loraplex.lora.weights import LoraWeights

log = logging.getLogger(__name__)

# Messages of errors after which the device cannot be trusted (CUDA errors are sticky).
_FATAL_MARKERS = (
    "CUDA error",
    "device-side assert",
    "illegal memory access",
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
)


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the process unable to serve: a CUDA (accelerator) error or out of
    memory, on the exception or anything it was raised from."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (torch.OutOfMemoryError, MemoryError, torch.AcceleratorError)):
            return True
        # torch reports CUDA failures as RuntimeErrors; other types may quote client text.
        if isinstance(e, RuntimeError) and any(m in str(e) for m in _FATAL_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def nonfinite_requests(
    seqs: list[Sequence], logits: torch.Tensor, prompt_scores: PromptScores
) -> set[Sequence]:
    """Requests whose logits this step are not all finite: one reduction over the sampled rows
    (``logits`` [N, vocab], one per ``seqs``), and the prompt logprobs already on the host."""
    bad: set[Sequence] = set()
    if seqs:
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        bad = {s for s, ok in zip(seqs, finite, strict=True) if not ok}
    for seq, scored in prompt_scores:
        if not all(math.isfinite(t.logprob) for t in scored):
            bad.add(seq)
    return bad


def nonfinite_message(seq: Sequence) -> str:
    # Workers key adapters <owner>/<name>@<version> (names hold neither "/" nor "@"): the
    # client knows the bare name, and the owner of a public adapter is not its business.
    name = seq.lora.partition("@")[0].rpartition("/")[2] if seq.lora else None
    who = f"adapter {name!r}" if name else "no adapter"
    return f"the model produced non-finite logits for this request ({who})"


def step_failure_message(exc: BaseException) -> str:
    # The details (paths, tensors) stay in the log: they are not the client's business.
    return f"internal error: the engine step serving this request failed ({type(exc).__name__})"


class RequestFailer:
    """Ends requests with an error and recovers from steps that raised.

    It owns the count of steps that raised in a row (``failed_steps_in_a_row``); it frees a
    failed request's blocks and slot through the engine's scheduler, allocator, K/V cache and
    adapter slots, and its per-request state through ``forget``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        allocator: BlockAllocator,
        kv_cache: PagedKVCache,
        slots: SlotTable,
        lora_weights: LoraWeights,
        forget: Callable[[str], None],
    ) -> None:
        self.scheduler = scheduler
        self.allocator = allocator
        self.kv_cache = kv_cache
        self.slots = slots
        self.lora_weights = lora_weights
        self._forget = forget
        self.failed_steps_in_a_row = 0  # steps that raised since the last one that did not

    def step_succeeded(self) -> None:
        self.failed_steps_in_a_row = 0

    def fail_request(self, seq: Sequence, message: str, code: int = 500) -> StepOutput:
        """End ``seq`` with an error (abort-like: blocks, adapter pin and slot freed)."""
        if not seq.finished:  # a step may fail after it finished the request
            self.scheduler.finish(seq, "error")
            self._forget(seq.request_id)
        seq.finish_reason = "error"
        return StepOutput(seq.request_id, [], "", True, "error", error=message, error_code=code)

    def fail_nonfinite(self, seq: Sequence) -> StepOutput:
        """End a request whose logits were not finite.  Its K/V may not be finite either: its
        own blocks are zeroed before they go back to the free list, and the prefix cache
        forgets what was computed under its adapter."""
        log.warning("request %s: non-finite logits (adapter %s)", seq.request_id, seq.lora)
        if self.allocator.caches_prefixes:
            self.allocator.forget_namespace(cache_namespace(seq.lora))  # every salt's
        own = [b for b in seq.block_table if self.allocator.ref_count(b) == 1]
        if own:
            index = torch.tensor(own, device=self.kv_cache.data.device)
            self.kv_cache.data.index_fill_(2, index, 0.0)
        # An adapter that passed the upload checks can still blow up on some prompt: that is
        # the adapter's (its tenant's) fault, a 400; the base model alone doing so is ours.
        return self.fail_request(seq, nonfinite_message(seq), 400 if seq.lora else 500)

    def fail_step(self, batch: ScheduledBatch, exc: Exception) -> list[StepOutput]:
        """Recover from a step that raised: fail exactly its requests, and empty the adapter
        slots it was loading (their weights may be half-copied).  Raises if that fails too."""
        self.failed_steps_in_a_row += 1
        log.error(
            "engine step failed; failing its %d request(s): %s",
            len(batch.seqs),
            [s.request_id for s in batch.seqs],
            exc_info=exc,
        )
        message = step_failure_message(exc)
        outputs = [self.fail_request(seq, message) for seq in batch.seqs]
        for name, slot in batch.adapter_loads:
            if not self.slots.pinned(name) and self.slots.slot_of(name) == slot:
                self.slots.evict(name)
                self.lora_weights.clear(slot)
        return outputs
