"""Cache-aware placement: remember which prompt prefixes went to which worker.

Workers reuse the K/V of full blocks they computed before (prefix caching), so a prompt is
cheapest on the worker that last prefilled the same prefix with the same adapter.  The scheduler
cannot see workers' caches; like SGLang's cache-aware router it keeps an approximate copy: the
block keys of every prompt it placed, per worker, in a bounded LRU.  Stale entries (the worker
evicted the blocks) only cost a less useful placement, never a wrong answer.

Keys chain the adapter's name and each full block's token ids, as the workers' own block keys
(``kvcache.prefix_cache.block_keys``) do, and like the worker a prompt's last token's block is
never counted.  They are the scheduler's own, though: a 64-bit chained hash of int tuples (the same
in every process: ints and tuples of ints are not salted), about ten times cheaper than the
workers' blake2b, since the scheduler only ever compares them with keys it computed itself.  A
collision costs at most a less useful placement.  Pure Python.

So that placement need not ask every worker, a reverse index remembers, per first block's key,
the ``HOLDERS`` workers it was most recently placed on; ``cached_blocks(...).holders(block_size)``
names the holders of the prompt's first block, the only workers that can match any of it.  A
prefix held by more workers is looked for on its ``HOLDERS`` most recent ones (a bounded sample:
affinity then still concentrates the prefix there, within the load balance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from itertools import islice

from loraplex.scheduler.worker_state import WorkerState

PrefixKey = int
HOLDERS = 8  # workers remembered per block key (most recent placements)


@lru_cache(maxsize=4096)
def _namespace(adapter: str) -> int:
    return int.from_bytes(hashlib.blake2b(adapter.encode(), digest_size=8).digest(), "little")


def prefix_keys(adapter: str | None, tokens: Sequence[int], block_size: int) -> list[PrefixKey]:
    """Keys of the full blocks a worker could reuse for this prompt (not the last token's)."""
    reusable = (len(tokens) - 1) // block_size * block_size
    if reusable <= 0:
        return []
    h = _namespace(adapter or "")
    t = tuple(tokens[:reusable])  # sliced as tuples below: one copy, not two per block
    keys = []
    append = keys.append
    for i in range(0, reusable, block_size):
        h = hash((h, t[i : i + block_size]))
        append(h)
    return keys


class PrefixAffinity:
    """Per worker: the block keys of prompts recently placed there (LRU, at most ``capacity``
    keys, and at most the worker's own KV blocks: it cannot cache more).

    The LRUs are plain dicts of ints (insertion order = recency), not ``OrderedDict``: a dict
    that holds only ints is invisible to Python's garbage collector, while every full collection
    walks every entry of an ``OrderedDict`` (1,000 workers x 10,000 keys made each full
    collection of the scheduler a 120 ms pause).  Eviction takes a batch (an eighth of the
    capacity) from the front, so finding the oldest keys stays amortised O(1) even though a
    dict's front fills with deleted slots between resizes."""

    def __init__(self, capacity_per_worker: int = 100_000) -> None:
        self.capacity = capacity_per_worker
        self._workers: dict[str, dict[PrefixKey, None]] = {}
        # first block's key -> the last HOLDERS workers it was placed on (insertion order =
        # recency)
        self._holders: dict[PrefixKey, dict[str, None]] = {}

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

    def cached_blocks(self, adapter: str | None, tokens: Sequence[int]) -> CachedBlocks:
        """For placement: how many leading blocks of this prompt a worker probably holds, and
        which workers may hold any (the keys are computed once per block size: workers may
        differ)."""
        return CachedBlocks(self, adapter, tokens)

    def holders(self, key: PrefixKey) -> list[str]:
        """The last ``HOLDERS`` workers ``key`` was placed on (that still hold it)."""
        h = self._holders.get(key)
        return list(h) if h else []

    def record(
        self, worker_id: str, keys: Sequence[PrefixKey], worker_blocks: int | None = None
    ) -> None:
        """``keys`` (a prompt's, from its first block) were placed on ``worker_id``, which has
        ``worker_blocks`` KV blocks (its LRU keeps no more keys than that)."""
        if not keys:
            return
        seen = self._workers.get(worker_id)
        if seen is None:
            seen = self._workers[worker_id] = {}
        for k in keys:
            if k in seen:
                del seen[k]  # re-inserted below: now the most recent
            seen[k] = None
        # Only first blocks are looked up by holder (a prompt's first key never appears at a
        # later position: keys chain from the adapter), so only they are indexed.
        first = keys[0]
        h = self._holders.get(first)
        if h is None:
            self._holders[first] = {worker_id: None}
        else:
            h.pop(worker_id, None)
            h[worker_id] = None
            if len(h) > HOLDERS:
                del h[next(iter(h))]
        cap = self.capacity if worker_blocks is None else min(self.capacity, worker_blocks)
        if len(seen) > cap:
            self._evict(worker_id, seen, len(seen) - cap + cap // 8)

    def _evict(self, worker_id: str, seen: dict[PrefixKey, None], n: int) -> None:
        """Drop the ``n`` least recent keys of ``worker_id``."""
        holders = self._holders
        for k in list(islice(seen, n)):
            del seen[k]
            h = holders.get(k)
            if h is not None:  # most evicted keys are not first blocks
                h.pop(worker_id, None)
                if not h:
                    del holders[k]

    def forget(self, worker_id: str) -> None:
        """The worker left (or restarted): its cache is gone."""
        for k in self._workers.pop(worker_id, ()):
            self._unhold(k, worker_id)

    def _unhold(self, key: PrefixKey, worker_id: str) -> None:
        h = self._holders.get(key)
        if h is not None:
            h.pop(worker_id, None)
            if not h:
                del self._holders[key]

    def __len__(self) -> int:
        return sum(len(s) for s in self._workers.values())


class CachedBlocks:
    """One prompt's view of the affinity: ``cached(w)`` is how many of its leading blocks ``w``
    probably holds; ``holders(block_size)`` the workers worth asking."""

    __slots__ = ("_affinity", "_adapter", "_tokens", "_keys")

    def __init__(self, affinity: PrefixAffinity, adapter: str | None, tokens: Sequence[int]):
        self._affinity = affinity
        self._adapter = adapter
        self._tokens = tokens
        self._keys: dict[int, list[PrefixKey]] = {}

    def keys(self, block_size: int) -> list[PrefixKey]:
        keys = self._keys.get(block_size)
        if keys is None:
            keys = self._keys[block_size] = prefix_keys(self._adapter, self._tokens, block_size)
        return keys

    def __call__(self, w: WorkerState) -> int:
        hb = w.hb  # matched_blocks inlined: placement asks this for every candidate
        seen = self._affinity._workers.get(hb.worker_id)
        if not seen:
            return 0
        n = 0
        for k in self._keys.get(hb.block_size) or self.keys(hb.block_size):
            if k not in seen:
                break
            n += 1
        return n

    def holders(self, block_size: int) -> list[str]:
        keys = self.keys(block_size)
        return self._affinity.holders(keys[0]) if keys else []
