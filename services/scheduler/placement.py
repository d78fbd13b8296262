"""Placement: which workers take a request, chosen without scanning every worker.

Per role it walks at most ``SCAN`` workers in load order (the registry's lazy heap,
``worker_index.RoleIndex``), looks at the holders of the prompt's first prefix block (at most
``prefix_affinity.HOLDERS``) and at the workers holding the adapter (all of them up to
``ADAPTER_EXACT``, else a power-of-two-choices sample of ``ADAPTER_SAMPLE``).  So a decision is
O(log W + SCAN + HOLDERS x log(prompt blocks)) (``prefix_affinity.leading_run``).  Below those
bounds it chooses exactly as the scan it replaced (``placement_scan.py``).  The common case (the least loaded worker is at the top of its
heap with room, and a holder of the prompt's first block holds some of it) is decided in one pass
over those holders (``_prefix_holder``); it chooses as the full path does
(``tests/scheduler/test_placement_index.py``).  Pure Python; it reads the registry's indexes,
never writes them (except popping, re-pushing and renewing heap entries while walking: see
``worker_index.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heappop, heappush

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.scheduler.prefix_affinity import CachedBlocks
from loraplex.scheduler.worker_index import RoleIndex, SampleSet
from loraplex.scheduler.worker_state import WorkerState

SCAN = 16  # workers of a role walked in load order per decision
ADAPTER_EXACT = 8  # up to this many holders of an adapter (per role), all are candidates
ADAPTER_SAMPLE = 2  # beyond: power-of-two choices among them


@dataclass(frozen=True)
class Placement:
    prefill: str
    decode: str  # "" when the prefill worker is colocated (role "both") and decodes itself


class Placer:
    """Chooses workers from the registry's state, shared by reference: ``workers`` (id ->
    state), ``roles`` (role -> its load/free-block heaps) and ``holders`` ((role, adapter) -> the
    workers holding it)."""

    def __init__(
        self,
        workers: dict[str, WorkerState],
        roles: dict[str, RoleIndex],
        holders: dict[tuple[str, str], SampleSet],
        prefix_balance: float,
        seed: int = 0,
        *,
        prefix_shortcut: bool = True,
    ) -> None:
        self.workers = workers
        # False: always the full path (the reference the one-pass shortcut is tested against)
        self.prefix_shortcut = prefix_shortcut
        self._roles = roles
        self._holders = holders
        self.prefix_balance = prefix_balance
        self._rng = random.Random(seed)  # power-of-two choices, reproducible

    def place(
        self,
        adapter: str | None,
        prompt_tokens: int,
        total_tokens: int,
        cached_blocks: Callable[[WorkerState], int] | None = None,
    ) -> Placement | None:
        """Choose workers with room, preferring the ones that probably hold most of the prompt's
        prefix (``cached_blocks``, within ``prefix_balance`` of the least load),
        then those that hold the adapter, then those with an adapter slot not pinned (a request
        for an adapter would wait on a worker whose every slot is pinned), then the least loaded.

        Preferences only order workers that have room, so a request never waits for a particular
        worker while another could take it (no starvation by affinity).  ``cached_blocks`` may have
        a ``holders(block_size)`` method (``PrefixAffinity.cached_blocks`` does): then only those
        workers are asked; a plain callable is asked for the workers within the balance among the
        ``SCAN`` least loaded.
        """
        prefill = self._best("prefill", adapter, prompt_tokens, cached_blocks)
        # Decode workers cache the prompts handed to them too, and skip receiving those blocks.
        decode = self._best("decode", adapter, total_tokens, cached_blocks) if prefill else None
        colocated = self._best("both", adapter, total_tokens, cached_blocks)
        if (
            prefill
            and decode
            and (colocated is None or max(prefill.load, decode.load) <= colocated.load)
        ):
            return Placement(prefill.hb.worker_id, decode.hb.worker_id)
        if colocated:
            return Placement(colocated.hb.worker_id, "")
        return None

    def _best(
        self,
        role: str,
        adapter: str | None,
        tokens: int,
        cached_blocks: Callable[[WorkerState], int] | None,
    ) -> WorkerState | None:
        idx = self._roles.get(role)
        if idx is None or not idx.members:
            return None
        holders_of = getattr(cached_blocks, "holders", None)
        if isinstance(cached_blocks, CachedBlocks) and self.prefix_shortcut:
            best = self._prefix_holder(role, adapter, idx, tokens, cached_blocks)
            if best is not None:
                return best
        resident = self._holders.get((role, adapter)) if adapter else None
        window = cached_blocks is not None and not holders_of
        fits, exact = self._walk(role, idx, tokens, window, adapter, resident)
        seen = {w.hb.worker_id for w in fits}
        prefix: set[str] = set()  # the only workers that may hold the prompt's first block
        if holders_of is not None:
            prefix.update(holders_of())
        holders = self._fitting(prefix, role, tokens, seen)
        if exact and prefix:
            # The walk found the least loaded worker with room, so the balance limit is known;
            # a holder of some of the prompt within it beats every worker that holds none:
            # the adapter's holders need not be looked at.
            limit = fits[0].load + self.prefix_balance
            asked = holders + [w for w in fits if w.hb.worker_id in prefix]
            best, key = self._choose(asked, adapter, resident, cached_blocks, prefix, limit)
            if best is not None and key[0] < 0:
                return best
        fits += holders
        if resident is not None:
            if len(resident) <= ADAPTER_EXACT:
                fits += self._fitting(resident, role, tokens, seen)
            else:
                sample = resident.sample(self._rng, ADAPTER_SAMPLE)
                fits += self._fitting(sample, role, tokens, seen)
        if not fits:
            return None
        limit = min(w.load for w in fits) + self.prefix_balance
        return self._choose(fits, adapter, resident, cached_blocks, prefix, limit)[0]

    def _prefix_holder(
        self,
        role: str,
        adapter: str | None,
        idx: RoleIndex,
        tokens: int,
        cached_blocks: CachedBlocks,
    ) -> WorkerState | None:
        """The common case of ``_best`` with a prefix index, in one pass: when the least loaded
        worker is at the top of the load heap with room (nothing to pop), the holder of the most
        of the prompt within the balance of it, or None to take the full path (no holder holds
        any, or the top has no room).  Chooses what the full path chooses: there a holder with
        cached blocks beats every worker without, and among holders the key is the same."""
        heap, workers = idx.by_load, self.workers
        while heap:  # stale tops are dropped or renewed, as the walk does
            load, wid = heap[0]
            least = workers.get(wid)
            if least is None or least.suspect or least.role != role or least.draining:
                heappop(heap)
                continue
            if least.load != load:
                heappop(heap)
                if least.load > load:  # a commit raised it since: renewed
                    heappush(heap, (least.load, wid))
                continue
            break
        else:
            return None
        if not least.has_slot or blocks_for(tokens, least.block_size) > least.free_blocks:
            return None  # the walk looks further, or falls back to free blocks
        limit = load + self.prefix_balance
        resident = self._holders.get((role, adapter)) if adapter else None
        best: WorkerState | None = None
        best_key: tuple = ()
        for wid in cached_blocks.holders():
            w = workers.get(wid)
            if w is None:
                continue
            load = w.load
            if load > limit:
                continue  # beyond the balance: counted as holding nothing
            if (
                w.role != role
                or w.draining
                or w.suspect
                or not w.has_slot
                or -(-tokens // w.block_size) > w.free_blocks
            ):
                continue
            cached = cached_blocks.held(wid)  # a holder: at least its first block
            held = resident is not None and wid in resident
            key = (-cached, w.adapter_cost(adapter, held), load, wid)
            if best is None or key < best_key:
                best, best_key = w, key
        return best

    def _fitting(
        self, wids: Iterable[str], role: str, tokens: int, seen: set[str]
    ) -> list[WorkerState]:
        """The workers of ``wids`` not in ``seen`` that can take the request (added to ``seen``)."""
        out = []
        workers = self.workers
        for wid in wids:  # has_room and placeable inlined: this runs for every candidate
            if wid in seen:
                continue
            w = workers.get(wid)
            if w is None:
                continue
            hb = w.hb
            if hb.role != role or hb.draining or w.suspect:
                continue
            seen.add(wid)
            # blocks_for(tokens, block_size) <= total - committed
            if (
                len(w.requests) < hb.max_num_seqs
                and w.committed - (-tokens // hb.block_size) <= hb.total_blocks
            ):
                out.append(w)
        return out

    @staticmethod
    def _choose(
        fits: list[WorkerState],
        adapter: str | None,
        resident: SampleSet | None,
        cached_blocks: Callable[[WorkerState], int] | None,
        prefix: set[str],
        limit: float,
    ) -> tuple[WorkerState | None, tuple]:
        """The best of ``fits`` and its key: most cached blocks (within the balance ``limit``;
        with a prefix index only its holders are asked), adapter resident, load, id."""
        ask_all = not hasattr(cached_blocks, "holders")
        best: WorkerState | None = None
        best_key: tuple = ()
        for w in fits:
            wid, load = w.hb.worker_id, w.load
            cached = 0
            if cached_blocks is not None and load <= limit and (ask_all or wid in prefix):
                cached = cached_blocks(w)
            held = resident is not None and wid in resident
            key = (-cached, w.adapter_cost(adapter, held), load, wid)
            if best is None or key < best_key:
                best, best_key = w, key
        return best, best_key

    def _free_entry(self, wid: str) -> tuple[int, str] | None:
        w = self.workers.get(wid)
        return None if w is None or not w.placeable else (w.committed - w.hb.total_blocks, wid)

    def _walk(
        self,
        role: str,
        idx: RoleIndex,
        tokens: int,
        window: bool,
        adapter: str | None,
        resident: SampleSet | None,
    ) -> tuple[list[WorkerState], bool]:
        """The least loaded worker of ``role`` with room among the ``SCAN`` least loaded (with
        ``window``: every one with room within the prefix balance of it, still among ``SCAN``),
        and True: it is the least loaded worker with room of all.  When those all have every
        adapter slot pinned and do not hold ``adapter`` (``WorkerState.slots_full``: the request
        would wait there for a slot), also the least loaded one with a slot to spare.  When none
        of the ``SCAN`` has room, the one with the most free KV blocks if it has, and False."""
        heap, workers = idx.by_load, self.workers
        got: list[WorkerState] = []
        kept: list[tuple[float, str]] = []
        seen: set[str] = set()
        least: float | None = None
        unblocked = False  # a worker with room that holds the adapter or has a slot to spare
        while heap and len(kept) < SCAN:
            entry = heappop(heap)
            load, wid = entry
            w = workers.get(wid)
            if w is None or w.role != role or not w.placeable:
                continue  # stale: dropped
            if w.load != load:
                if w.load > load:  # a commit raised it since: renewed (met again in load order)
                    heappush(heap, (w.load, wid))
                continue  # else a release lowered it, and pushed the lower entry
            if wid in seen:
                continue  # a duplicate (the load went back to an earlier value): dropped
            seen.add(wid)
            kept.append(entry)
            if load >= 1.0:
                break  # sorted by load: nobody further has a batch slot
            in_window = least is None or (window and load <= least + self.prefix_balance)
            if not in_window and unblocked:
                break  # past the window, and a worker that need not wait for a slot is found
            if w.has_room(blocks_for(tokens, w.block_size)):
                blocked = w.adapter_cost(adapter, resident is not None and wid in resident) == 2
                if least is None:
                    least = load
                if in_window or not blocked:
                    got.append(w)
                unblocked = unblocked or not blocked
                if not window and unblocked:
                    break
        for entry in kept:
            heappush(heap, entry)
        if got:
            return got, True
        idx.flush_free(self._free_entry)
        free = idx.by_free
        while free:
            debt, wid = free[0]
            w = workers.get(wid)
            if w is None or w.role != role or not w.placeable:
                heappop(free)
            elif (now := w.committed - w.hb.total_blocks) != debt:
                heappop(free)
                if now > debt:  # a commit raised it since: renewed
                    heappush(free, (now, wid))
            else:
                return ([w] if w.has_room(blocks_for(tokens, w.block_size)) else []), False
        return [], False
