"""What the scheduler knows about workers: liveness, committed capacity, adapter residency.

Pure Python bookkeeping.  Capacity is *committed* here, not guessed from heartbeats alone: every
request placed on a worker holds a batch slot and the KV blocks its full length may need until the
worker reports it done, so work never queues inside a worker and the policy's order is what runs.

Placement cost does not grow with the number of workers (``worker_index.py`` holds the indexes):
per role it walks at most ``SCAN`` workers in load order (a lazy heap), looks at the holders of
the prompt's first prefix block (at most ``prefix_affinity.HOLDERS``) and at the workers holding
the adapter (all of them up to ``ADAPTER_EXACT``, else a power-of-two-choices sample of
``ADAPTER_SAMPLE``).  So a decision is O(log W + SCAN + prompt blocks x HOLDERS).  Below those
bounds it chooses exactly as the scan it replaced (``placement_scan.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from heapq import heappop, heappush

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.worker_index import RoleIndex, SampleSet

SCAN = 16  # workers of a role walked in load order per decision
ADAPTER_EXACT = 8  # up to this many holders of an adapter (per role), all are candidates
ADAPTER_SAMPLE = 2  # beyond: power-of-two choices among them
ROLES = ("prefill", "decode", "both")


@dataclass
class WorkerState:
    hb: WorkerHeartbeat
    last_seen: float
    requests: dict[str, int] = field(default_factory=dict)  # request_id -> committed KV blocks
    # A peer reported it unreachable (no responders, K/V refused): nothing is placed on it until
    # its next heartbeat, so a retry cannot go straight back to a worker that just died.
    suspect: bool = False
    committed: int = 0  # sum(requests.values()), kept by the registry's commit/release
    # share of its batch slots in use: len(requests) / max_num_seqs, kept by the registry (read
    # several times per decision, so stored rather than computed)
    load: float = 0.0

    @property
    def committed_blocks(self) -> int:
        return self.committed

    def has_room(self, blocks: int) -> bool:
        hb = self.hb
        return (
            not hb.draining
            and len(self.requests) < hb.max_num_seqs
            and self.committed + blocks <= hb.total_blocks
        )

    def update_load(self) -> None:
        self.load = len(self.requests) / max(1, self.hb.max_num_seqs)

    @property
    def placeable(self) -> bool:
        return not self.hb.draining and not self.suspect


@dataclass(frozen=True)
class Placement:
    prefill: str
    decode: str  # "" when the prefill worker is colocated (role "both") and decodes itself


def _shape(hb: WorkerHeartbeat) -> tuple:
    """What ``can_serve``/``could_ever_fit`` and the role index depend on."""
    return (hb.role, hb.draining, hb.total_blocks, hb.block_size, hb.max_num_seqs)


class WorkerRegistry:
    def __init__(
        self, heartbeat_timeout_s: float = 3.0, prefix_balance: float = 0.25, *, seed: int = 0
    ) -> None:
        self.timeout = heartbeat_timeout_s
        # Prefix affinity may pick a worker at most this much busier (share of its batch) than
        # the least loaded one that has room, so one hot system prompt cannot pile onto a worker.
        self.prefix_balance = prefix_balance
        self.workers: dict[str, WorkerState] = {}
        self._roles: dict[str, RoleIndex] = {r: RoleIndex() for r in ROLES}
        self._holders: dict[tuple[str, str], SampleSet] = {}  # (role, adapter) -> worker ids
        self._dirty: set[str] = set()  # workers to push into their role's heaps
        # role -> (most tokens one alive worker can hold, block sizes); None: recompute
        self._capacity: dict[str, tuple[int, frozenset[int]]] | None = None
        self._rng = random.Random(seed)  # power-of-two choices, reproducible

    # ---- membership ----------------------------------------------------------------------------
    def heartbeat(self, hb: WorkerHeartbeat, now: float) -> bool:
        """Record a heartbeat; True when the worker is new."""
        state = self.workers.get(hb.worker_id)
        if state is None:
            self.workers[hb.worker_id] = WorkerState(hb, now)
            self._join(hb)
            return True
        old = state.hb
        state.hb, state.last_seen = hb, now
        if _shape(old) != _shape(hb):
            state.update_load()
            self._leave(old)
            self._join(hb)
        elif old.adapters != hb.adapters:
            self._move_adapters(old, hb)
        if state.suspect:
            self._dirty.add(hb.worker_id)
        state.suspect = False
        return False

    def _join(self, hb: WorkerHeartbeat) -> None:
        self._roles.setdefault(hb.role, RoleIndex()).members.add(hb.worker_id)
        for a in hb.adapters:
            self._holders.setdefault((hb.role, a), SampleSet()).add(hb.worker_id)
        self._dirty.add(hb.worker_id)
        self._capacity = None

    def _leave(self, hb: WorkerHeartbeat) -> None:
        self._roles[hb.role].members.discard(hb.worker_id)
        for a in hb.adapters:
            holders = self._holders.get((hb.role, a))
            if holders is not None:
                holders.discard(hb.worker_id)
                if not holders:
                    del self._holders[(hb.role, a)]
        self._capacity = None  # heap entries go stale on their own

    def _move_adapters(self, old: WorkerHeartbeat, hb: WorkerHeartbeat) -> None:
        before, after = set(old.adapters), set(hb.adapters)
        for a in before - after:
            holders = self._holders.get((hb.role, a))
            if holders is not None:
                holders.discard(hb.worker_id)
                if not holders:
                    del self._holders[(hb.role, a)]
        for a in after - before:
            self._holders.setdefault((hb.role, a), SampleSet()).add(hb.worker_id)

    def suspect(self, worker_id: str) -> None:
        """Place nothing on ``worker_id`` until it proves alive with a heartbeat."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.suspect = True  # its heap entries fail the placeable check from now on

    def holds(self, worker_id: str, request_id: str) -> bool:
        """Whether ``worker_id``'s latest heartbeat lists ``request_id`` as held."""
        w = self.workers.get(worker_id)
        return w is not None and request_id in (w.hb.active or ())

    def expire(self, now: float) -> list[WorkerState]:
        """Remove and return workers whose heartbeats stopped (a liveness tick, not a decision)."""
        dead = [w for w in self.workers.values() if now - w.last_seen > self.timeout]
        for w in dead:
            del self.workers[w.hb.worker_id]
            self._leave(w.hb)
        return dead

    # ---- what could run at all -----------------------------------------------------------------
    def _role_capacity(self) -> dict[str, tuple[int, frozenset[int]]]:
        """Per role, over alive (not draining) workers: the most tokens one can hold (-1: none),
        and their block sizes.  Recomputed only after a worker joined, left or changed shape."""
        if self._capacity is None:
            cap: dict[str, tuple[int, frozenset[int]]] = {}
            for w in self.workers.values():
                if w.hb.draining:
                    continue
                most, sizes = cap.get(w.hb.role, (-1, frozenset()))
                tokens = w.hb.total_blocks * w.hb.block_size
                cap[w.hb.role] = (max(most, tokens), sizes | {w.hb.block_size})
            self._capacity = cap
        return self._capacity

    def can_serve(self) -> bool:
        """Some live worker set can run a request end to end (colocated, or prefill + decode)."""
        cap = self._role_capacity()
        return "both" in cap or ("prefill" in cap and "decode" in cap)

    def could_ever_fit(self, prompt_tokens: int, total_tokens: int) -> bool:
        """Whether an idle set of live workers could hold the request at all."""
        cap = self._role_capacity()

        def fits(role: str, tokens: int) -> bool:
            # blocks_for(tokens, bs) <= total  <=>  tokens <= total * bs
            return cap.get(role, (-1, frozenset()))[0] >= tokens

        return fits("both", total_tokens) or (
            fits("prefill", prompt_tokens) and fits("decode", total_tokens)
        )

    # ---- placement -----------------------------------------------------------------------------
    def place(
        self,
        adapter: str | None,
        prompt_tokens: int,
        total_tokens: int,
        cached_blocks: Callable[[WorkerState], int] | None = None,
    ) -> Placement | None:
        """Choose workers with room, preferring the ones that probably hold most of the prompt's
        prefix (``cached_blocks``, within ``prefix_balance`` of the least load),
        then those that hold the adapter, then the least loaded.

        Preferences only order workers that have room, so a request never waits for a particular
        worker while another could take it (no starvation by affinity).  ``cached_blocks`` may have
        a ``holders(block_size)`` method (``PrefixAffinity.cached_blocks`` does): then only those
        workers are asked; a plain callable is asked for the workers within the balance among the
        ``SCAN`` least loaded.
        """
        self._flush()
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
        fits, exact = self._walk(
            role, idx, tokens, window=cached_blocks is not None and not holders_of
        )
        seen = {w.hb.worker_id for w in fits}
        prefix: set[str] = set()  # the only workers that may hold the prompt's first block
        if holders_of is not None:
            for bs in self._role_capacity().get(role, (-1, frozenset()))[1]:
                prefix.update(holders_of(bs))
        resident = self._holders.get((role, adapter)) if adapter else None
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

    def _fitting(
        self, wids: Iterable[str], role: str, tokens: int, seen: set[str]
    ) -> list[WorkerState]:
        """The workers of ``wids`` not in ``seen`` that can take the request (added to ``seen``)."""
        out = []
        for wid in wids:
            w = self.workers.get(wid)
            if wid in seen or w is None or w.hb.role != role or not w.placeable:
                continue
            seen.add(wid)
            if w.has_room(blocks_for(tokens, w.hb.block_size)):
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
            absent = (resident is None or wid not in resident) if adapter else False
            key = (-cached, absent, load, wid)
            if best is None or key < best_key:
                best, best_key = w, key
        return best, best_key

    def _walk(
        self, role: str, idx: RoleIndex, tokens: int, window: bool
    ) -> tuple[list[WorkerState], bool]:
        """The least loaded worker of ``role`` with room among the ``SCAN`` least loaded (with
        ``window``: every one with room within the prefix balance of it, still among ``SCAN``),
        and True: it is the least loaded worker with room of all.  When none of those has room,
        the one with the most free KV blocks if it has, and False."""
        heap, workers = idx.by_load, self.workers
        got: list[WorkerState] = []
        kept: list[tuple[float, str]] = []
        seen: set[str] = set()
        least: float | None = None
        while heap and len(kept) < SCAN:
            entry = heappop(heap)
            load, wid = entry
            w = workers.get(wid)
            if w is None or w.hb.role != role or not w.placeable or w.load != load:
                continue  # stale: dropped
            if wid in seen:
                continue  # a duplicate (the load went back to an earlier value): dropped
            seen.add(wid)
            kept.append(entry)
            if load >= 1.0 or (least is not None and load > least + self.prefix_balance):
                break  # sorted by load: nobody further has a batch slot / is in the window
            if w.has_room(blocks_for(tokens, w.hb.block_size)):
                if least is None:
                    least = load
                got.append(w)
                if not window:
                    break
        for entry in kept:
            heappush(heap, entry)
        if got:
            return got, True
        free = idx.by_free
        while free:
            debt, wid = free[0]
            w = workers.get(wid)
            stale = w is None or w.hb.role != role or not w.placeable
            if stale or w.committed - w.hb.total_blocks != debt:
                heappop(free)
            else:
                return ([w] if w.has_room(blocks_for(tokens, w.hb.block_size)) else []), False
        return [], False

    def _flush(self) -> None:
        """Push the workers whose load or capacity changed since the last decision."""
        if not self._dirty:
            return
        touched: set[str] = set()
        for wid in self._dirty:
            w = self.workers.get(wid)
            if w is None or not w.placeable:
                continue
            role = w.hb.role
            idx = self._roles[role]
            heappush(idx.by_load, (w.load, wid))
            heappush(idx.by_free, (w.committed - w.hb.total_blocks, wid))
            touched.add(role)
        self._dirty.clear()
        for role in touched:
            idx = self._roles[role]
            if idx.needs_compaction():
                self._rebuild(role, idx)

    def _rebuild(self, role: str, idx: RoleIndex) -> None:
        live = [self.workers[wid] for wid in idx.members]
        live = [w for w in live if w.placeable]
        idx.rebuild(
            [(w.load, w.hb.worker_id) for w in live],
            [(w.committed - w.hb.total_blocks, w.hb.worker_id) for w in live],
        )

    # ---- committed capacity --------------------------------------------------------------------
    def commit(self, worker_id: str, request_id: str, tokens: int) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            blocks = blocks_for(tokens, w.hb.block_size)
            w.committed += blocks - w.requests.get(request_id, 0)
            w.requests[request_id] = blocks
            w.update_load()
            self._dirty.add(worker_id)

    def release(self, worker_id: str, request_id: str) -> None:
        w = self.workers.get(worker_id)
        if w is not None and request_id in w.requests:
            w.committed -= w.requests.pop(request_id)
            w.update_load()
            self._dirty.add(worker_id)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            wid: {
                "requests": len(w.requests),
                "committed_blocks": w.committed_blocks,
                "total_blocks": w.hb.total_blocks,
            }
            for wid, w in self.workers.items()
        }
