"""Cache-aware placement: remember which prompt prefixes went to which worker.

Workers reuse the K/V of full blocks they computed before (prefix caching), so a prompt is
cheapest on the worker that last prefilled the same prefix with the same adapter.  The scheduler
cannot see workers' caches; like SGLang's cache-aware router it keeps an approximate copy: the
prefix keys (``loraplex.prefix_keys``: one per ``PREFIX_BLOCK`` tokens, chained from the adapter)
of every prompt it placed, per worker, in a bounded LRU.  Stale entries (the worker evicted the
blocks) only cost a less useful placement, never a wrong answer.  Pure Python.

Each LRU is *prefix-closed*: a prompt's keys are recorded deepest first, so a key is never less
recent than any key below it in the same chain, and eviction (least recent first) takes a
chain's deeper blocks before its shallower ones.  So the keys of a prompt that a worker holds are
always a leading run, and how long that run is takes a binary search: O(log blocks) lookups per
worker asked, however long the prompt (a 4,096-token prompt has 255 keys).

So that placement need not ask every worker, a reverse index remembers, per first block's key,
the ``HOLDERS`` workers it was most recently placed on; ``cached_blocks(...).holders()`` names
the holders of the prompt's first block, the only workers that can match any of it.  A prefix
held by more workers is looked for on its ``HOLDERS`` most recent ones (a bounded sample:
affinity then still concentrates the prefix there, within the load balance).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from loraplex.prefix_keys import prefix_keys
from loraplex.scheduler.worker_state import WorkerState

PrefixKey = int
HOLDERS = 8  # workers remembered per block key (most recent placements)


def leading_run(seen: dict[PrefixKey, None], keys: Sequence[PrefixKey], known: int = 0) -> int:
    """How many leading ``keys`` are in ``seen`` (a prefix-closed LRU), the first ``known`` of
    them known to be: a binary search for the first one missing."""
    lo, hi = known, len(keys)
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if keys[mid - 1] in seen:
            lo = mid
        else:
            hi = mid - 1
    return lo


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
        return leading_run(seen, keys) if seen else 0

    def cached_blocks(
        self,
        adapter: str | None,
        tokens: Sequence[int],
        keys: Sequence[PrefixKey] | None = None,
        salt: str = "",
    ) -> CachedBlocks:
        """For placement: how many leading blocks of this prompt a worker probably holds, and
        which workers may hold any.  ``keys``: the prompt's prefix keys when the gateway sent
        them (else computed here, under the request's cache ``salt``, once, when first asked)."""
        return CachedBlocks(self, adapter, tokens, keys, salt)

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
        pop = seen.pop
        for k in reversed(keys):  # deepest first: the first block ends the most recent
            pop(k, None)  # a key held already moves to the end (measured: cheaper than a test)
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
    probably holds; ``holders()`` the workers worth asking."""

    __slots__ = ("_affinity", "_adapter", "_tokens", "_keys", "_salt")

    def __init__(
        self,
        affinity: PrefixAffinity,
        adapter: str | None,
        tokens: Sequence[int],
        keys: Sequence[PrefixKey] | None = None,
        salt: str = "",
    ):
        self._affinity = affinity
        self._salt = salt
        self._adapter = adapter
        self._tokens = tokens
        self._keys = keys

    def keys(self) -> Sequence[PrefixKey]:
        keys = self._keys
        if keys is None:
            keys = self._keys = prefix_keys(self._adapter, self._tokens, salt=self._salt)
        return keys

    def __call__(self, w: WorkerState) -> int:
        seen = self._affinity._workers.get(w.hb.worker_id)
        return leading_run(seen, self.keys()) if seen else 0

    def held(self, worker_id: str) -> int:
        """``cached(w)`` for one of ``holders()``: its first block is known held (the holder
        index drops a worker when its LRU does), so the search starts at the second."""
        return leading_run(self._affinity._workers[worker_id], self.keys(), 1)

    def holders(self) -> list[str]:
        keys = self.keys()
        return self._affinity.holders(keys[0]) if keys else []
