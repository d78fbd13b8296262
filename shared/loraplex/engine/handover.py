"""The decode side of a prefill -> decode K/V hand-over.

A decode worker reserves blocks for a request whose prompt K/V are on their way (reusing the
leading blocks its prefix cache already holds), then ``inject``s the received payload and the
first token sampled by the prefill worker, which joins the request to the decode batch.
"""

from __future__ import annotations

from collections.abc import Callable, Container

import torch

from loraplex.engine.logprobs import TokenLogprobs
from loraplex.engine.outputs import StepOutput
from loraplex.engine.scheduler import Scheduler
from loraplex.engine.sequence import Sequence, cache_namespace
from loraplex.errors import AdapterNotFoundError, InvalidRequestError, LoraplexError
from loraplex.kvcache.block_allocator import BlockAllocator, blocks_for
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.kvcache.prefix_cache import prefix_block_keys
from loraplex.sampling_params import SamplingParams

# (seq, first token, its logprobs, cached) -> the token's output; ``RequestTracker.append``.
AppendToken = Callable[[Sequence, int, TokenLogprobs | None, bool], StepOutput]


class Handover:
    """Owns the blocks reserved for requests whose K/V are on their way (by request id), and
    joins a request to the decode batch once its K/V arrive.

    It reads the engine's allocator, scheduler, K/V cache and registered adapter names; the
    per-request state (grammar, generator, detokenizer) is the engine's ``RequestTracker``'s
    (``request_tracker.py``), reached through ``track`` (may refuse), ``forget`` and ``append``.
    """

    def __init__(
        self,
        block_size: int,
        allocator: BlockAllocator,
        scheduler: Scheduler,
        kv_cache: PagedKVCache,
        adapters: Container[str],
        track: Callable[[Sequence], None],
        forget: Callable[[str], None],
        append: AppendToken,
    ) -> None:
        self.block_size = block_size
        self.allocator = allocator
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.adapters = adapters
        self._track = track
        self._forget = forget
        self._append = append
        self.reservations: dict[str, list[int]] = {}

    def reserve_blocks(self, request_id: str, num_tokens: int) -> bool:
        """Set aside blocks for a request whose K/V are about to arrive; False when they don't fit."""
        need = blocks_for(num_tokens, self.block_size)
        if request_id in self.reservations or not self.allocator.can_allocate(need):
            return False
        self.reservations[request_id] = self.allocator.allocate(need)
        return True

    def reserve_for_prompt(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        lora: str | None,
        cache_salt: str = "",
    ) -> int | None:
        """``reserve_blocks`` for a prompt's K/V that reuses the leading blocks this engine
        already caches for the same adapter and cache salt.  Returns how many leading blocks are already here
        (the sender may skip them), or None when the rest does not fit."""
        if request_id in self.reservations:
            return None
        bs, alloc = self.block_size, self.allocator
        hit: list[int] = []
        if alloc.caches_prefixes and (lora is None or lora in self.adapters):
            keys = prefix_block_keys(prompt_token_ids, bs, cache_namespace(lora, cache_salt))
            hit = alloc.lookup(keys)
        need = blocks_for(len(prompt_token_ids), bs) - len(hit)
        if not alloc.can_allocate_after(hit, need):
            return None
        self.reservations[request_id] = alloc.allocate_after(hit, need)
        self.scheduler.prefix_hit_tokens += len(hit) * bs
        self.scheduler.prefix_query_tokens += len(prompt_token_ids)
        return len(hit)

    def release_reservation(self, request_id: str) -> None:
        blocks = self.reservations.pop(request_id, None)
        if blocks:
            self.allocator.free(blocks)

    def inject(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: str | None,
        first_token: int,
        payload: torch.Tensor,
        cached_blocks: int = 0,
        first_logprobs: TokenLogprobs | None = None,
        prompt_logprobs: list[TokenLogprobs] | None = None,
        generated: list[int] | None = None,
        cache_salt: str = "",
    ) -> StepOutput:
        """Join a request prefilled elsewhere to the decode batch; returns its first token's
        output (which carries ``prompt_logprobs``, when given).  ``payload`` holds the K/V of
        the reserved blocks after the first ``cached_blocks`` (which ``reserve_for_prompt``
        found already cached here).  ``generated``: a migrated request's tokens from before its
        worker died, prefilled with the prompt (the payload covers both); ``first_token``
        follows them."""
        blocks = self.reservations.pop(request_id)
        seq = Sequence(request_id, list(prompt_token_ids), params, lora)
        seq.output_token_ids = list(generated or [])
        try:
            if lora is not None and lora not in self.adapters:
                raise AdapterNotFoundError(f"adapter {lora!r} is not registered")
            if payload.shape[2] != len(blocks) - cached_blocks:
                raise InvalidRequestError(
                    f"K/V payload has {payload.shape[2]} blocks, expected "
                    f"{len(blocks) - cached_blocks}"
                )
            self._track(seq)
        except LoraplexError:
            self.allocator.free(blocks)
            self._forget(request_id)
            raise
        self.kv_cache.import_blocks(blocks[cached_blocks:], payload)
        seq.cache_namespace = cache_namespace(lora, cache_salt)
        seq.block_table = blocks
        seq.num_cached = seq.num_tokens
        seq.prompt_logprobs = list(prompt_logprobs or [])
        self.scheduler.register_computed(seq, seq.num_cached)  # imported K/V serve later prompts
        out = self._append(seq, first_token, first_logprobs, False)
        if not out.finished:
            self.scheduler.add_prefilled(seq)
        return out
