"""Cache-aware placement: remember which prompt prefixes went to which worker.

Workers reuse the K/V of full blocks they computed before (prefix caching), so a prompt is
cheapest on the worker that last prefilled the same prefix with the same adapter.  The scheduler
cannot see workers' caches; like SGLang's cache-aware router it keeps an approximate copy: the
block keys of every prompt it placed, per worker, in a bounded LRU.  Stale entries (the worker
evicted the blocks) only cost a less useful placement, never a wrong answer.

Keys are the workers' own block keys (``kvcache.prefix_cache.block_keys``: a stable hash chain of
the adapter and the token ids), over the adapter's name; like the worker, a prompt's last token's
block is never counted.  Pure Python.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from loraplex.kvcache.prefix_cache import prefix_block_keys
from loraplex.scheduler.workers import WorkerState

PrefixKey = bytes


def prefix_keys(adapter: str | None, tokens: Sequence[int], block_size: int) -> list[PrefixKey]:
    """Keys of the full blocks a worker could reuse for this prompt (not the last token's)."""
    return prefix_block_keys(tokens, block_size, adapter or "")


class PrefixAffinity:
    """Per worker: the block keys of prompts recently placed there (LRU, ``capacity`` keys)."""

    def __init__(self, capacity_per_worker: int = 100_000) -> None:
        self.capacity = capacity_per_worker
        self._workers: dict[str, OrderedDict[PrefixKey, None]] = {}

    def matched_blocks(self, worker_id: str, keys: Sequence[PrefixKey]) -> int:
        """How many leading blocks of a prompt the worker probably still holds."""
        seen = self._workers.get(worker_id)
        if not seen:
            return 0
        n = 0
        for k in keys:
            if k not in seen:
                break
            n += 1
        return n

    def cached_blocks(
        self, adapter: str | None, tokens: Sequence[int]
    ) -> Callable[[WorkerState], int]:
        """For placement: how many leading blocks of this prompt a worker probably holds (the keys
        are computed once per block size: workers may differ)."""
        keys: dict[int, list[PrefixKey]] = {}

        def cached(w: WorkerState) -> int:
            bs = w.hb.block_size
            if bs not in keys:
                keys[bs] = prefix_keys(adapter, tokens, bs)
            return self.matched_blocks(w.hb.worker_id, keys[bs])

        return cached

    def record(self, worker_id: str, keys: Sequence[PrefixKey]) -> None:
        seen = self._workers.setdefault(worker_id, OrderedDict())
        for k in keys:
            seen[k] = None
            seen.move_to_end(k)
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def forget(self, worker_id: str) -> None:
        """The worker left (or restarted): its cache is gone."""
        self._workers.pop(worker_id, None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._workers.values())
