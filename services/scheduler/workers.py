"""What the scheduler knows about workers: liveness, committed capacity, adapter residency.

Pure Python bookkeeping.  Capacity is *committed* here, not guessed from heartbeats alone: every
request placed on a worker holds a batch slot and the KV blocks its full length may need until the
worker reports it done, so work never queues inside a worker and the policy's order is what runs.

The registry keeps the indexes placement reads (``worker_index.py``: per-role load and free-block
heaps, the holders of each adapter); ``placement.py`` chooses from them without scanning every
worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from heapq import heappush

from loraplex.kvcache.block_allocator import blocks_for
from loraplex.protocol import WorkerHeartbeat
from loraplex.scheduler.placement import Placement, Placer
from loraplex.scheduler.worker_index import RoleIndex, SampleSet
from loraplex.scheduler.worker_state import WorkerState

ROLES = ("prefill", "decode", "both")


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
        # role -> the most tokens one alive worker can hold; None: recompute
        self._capacity: dict[str, int] | None = None
        self._placer = Placer(self.workers, self._roles, self._holders, prefix_balance, seed)

    # ---- membership ----------------------------------------------------------------------------
    def heartbeat(self, hb: WorkerHeartbeat, now: float) -> bool:
        """Record a heartbeat; True when the worker is new."""
        state = self.workers.get(hb.worker_id)
        if state is None:
            self.workers[hb.worker_id] = WorkerState(hb, now)
            self._join(hb)
            return True
        old = state.hb
        state.observe(hb, now)
        if _shape(old) != _shape(hb):
            self._leave(old, state.adapter_runs)
            self._join(hb, state.adapter_runs)
        elif old.adapters != hb.adapters:
            self._move_adapters(old, hb, state.adapter_runs)
        if state.suspect:
            self._dirty.add(hb.worker_id)
        state.suspect = False
        return False

    def restarted(self, hb: WorkerHeartbeat) -> WorkerState | None:
        """When ``hb`` comes from a new process of a registered worker (another incarnation),
        remove the old one and return its state (its requests are lost with it), else None."""
        state = self.workers.get(hb.worker_id)
        if state is None or not hb.incarnation or state.hb.incarnation in ("", hb.incarnation):
            return None
        self._remove(state)
        return state

    # A worker holds an adapter for placement when its heartbeat lists it or a request placed
    # there for it still runs (``WorkerState.adapter_runs``): the next request for an adapter
    # just placed follows it into the same slot instead of paging it into a second worker.
    def _join(self, hb: WorkerHeartbeat, runs: Iterable[str] = ()) -> None:
        self._roles.setdefault(hb.role, RoleIndex()).members.add(hb.worker_id)
        for a in (*hb.adapters, *runs):
            self._add_holder(hb.role, a, hb.worker_id)
        self._dirty.add(hb.worker_id)
        self._capacity = None

    def _leave(self, hb: WorkerHeartbeat, runs: Iterable[str] = ()) -> None:
        self._roles[hb.role].members.discard(hb.worker_id)
        for a in (*hb.adapters, *runs):
            self._drop_holder(hb.role, a, hb.worker_id)
        self._capacity = None  # heap entries go stale on their own

    def _move_adapters(
        self, old: WorkerHeartbeat, hb: WorkerHeartbeat, runs: dict[str, int]
    ) -> None:
        before, after = set(old.adapters), set(hb.adapters)
        for a in before - after:
            if a not in runs:
                self._drop_holder(hb.role, a, hb.worker_id)
        for a in after - before:
            self._add_holder(hb.role, a, hb.worker_id)

    def _add_holder(self, role: str, adapter: str, worker_id: str) -> None:
        self._holders.setdefault((role, adapter), SampleSet()).add(worker_id)

    def _drop_holder(self, role: str, adapter: str, worker_id: str) -> None:
        holders = self._holders.get((role, adapter))
        if holders is not None:
            holders.discard(worker_id)
            if not holders:
                del self._holders[(role, adapter)]

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
            self._remove(w)
        return dead

    def _remove(self, state: WorkerState) -> None:
        del self.workers[state.hb.worker_id]
        self._leave(state.hb, state.adapter_runs)

    # ---- what could run at all -----------------------------------------------------------------
    def _role_capacity(self) -> dict[str, int]:
        """Per role, over alive (not draining) workers: the most tokens one can hold.
        Recomputed only after a worker joined, left or changed shape."""
        if self._capacity is None:
            cap: dict[str, int] = {}
            for w in self.workers.values():
                if not w.hb.draining:
                    tokens = w.hb.total_blocks * w.hb.block_size
                    cap[w.hb.role] = max(cap.get(w.hb.role, -1), tokens)
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
            return cap.get(role, -1) >= tokens

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
        """``Placer.place`` on the indexes brought up to date (see ``placement.py``)."""
        self._flush()
        return self._placer.place(adapter, prompt_tokens, total_tokens, cached_blocks)

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
            idx.free_pending.add(wid)
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
    def commit(
        self, worker_id: str, request_id: str, tokens: int, adapter: str | None = None
    ) -> None:
        """Hold ``tokens`` of KV room and a batch slot on ``worker_id`` for ``request_id`` (again:
        its share changes), and with ``adapter`` an adapter slot."""
        w = self.workers.get(worker_id)
        if w is not None:
            if adapter and w.pin(request_id, adapter):
                self._add_holder(w.hb.role, adapter, worker_id)
            blocks = blocks_for(tokens, w.hb.block_size)
            before = w.requests.get(request_id, 0)
            w.committed += blocks - before
            w.requests[request_id] = blocks
            w.update_load()
            # A commit only raises the worker's load and committed blocks (unless it shrinks a
            # request's share): its heap entries are then too low, and placement renews such an
            # entry when it reaches the top, so the common case pushes nothing.
            if blocks < before:
                self._dirty.add(worker_id)

    def release(self, worker_id: str, request_id: str) -> None:
        w = self.workers.get(worker_id)
        if w is not None and request_id in w.requests:
            adapter = w.unpin(request_id)
            if adapter is not None and adapter not in w.hb.adapters:
                self._drop_holder(w.hb.role, adapter, worker_id)
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
