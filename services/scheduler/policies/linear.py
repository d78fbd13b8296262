"""The linear-scan policies the heap-based ones replaced, kept as their reference.

``VTCPolicy``, ``LCFPolicy`` and ``FCFSPolicy`` find the tenant to serve (and VTC the lift's
minimum) at the top of a lazy heap (``backlog_heap.py``).  The classes here are the same policies
with the original scan over every backlogged tenant: O(n) per decision.  They are what
``tests/scheduler/test_heap_equivalence.py`` replays random workloads against, decision by
decision, and the "linear" column of ``bench/scheduler.py``.  Not offered as ``--fairness``
choices: they decide exactly as their heap twins, only slower.  They keep the twins' ``name``, so
snapshots move between the two.
"""

from __future__ import annotations

from typing import ClassVar

from .base import QueuedRequest
from .fcfs import FCFSPolicy
from .lcf import LCFPolicy
from .vtc import VTCPolicy


class LinearVTCPolicy(VTCPolicy):
    # The backlog heap's upkeep is off: the scan needs none.  (Written out in each class rather
    # than mixed in: compiled classes, ``loraplex/native.py``, take one base.)
    def _head_changed(self, tenant: str) -> None:
        return None

    def _counter_changed(self, tenant: str) -> None:
        return None

    def _reindex(self) -> None:
        return None

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        best: tuple[float, int] | None = None
        best_req: QueuedRequest | None = None
        for tenant, q in self._queues.items():
            seq, req = q[0]
            key = (self._counters[tenant], seq)
            if best is None or key < best:
                best, best_req = key, req
        return best_req

    def _on_enqueue(self, req: QueuedRequest, now: float, was_empty: bool) -> None:
        if not (self.lift and was_empty):
            return
        u = req.tenant
        others = [self._counters[k] for k in self._queues if k != u]
        if others:
            self._counters[u] = max(self._counters[u], min(others))
        elif self._last_left is not None:
            self._counters[u] = max(self._counters[u], self._counters[self._last_left])


class LinearLCFPolicy(LinearVTCPolicy):
    name: ClassVar[str] = LCFPolicy.name
    lift: ClassVar[bool] = LCFPolicy.lift


class LinearFCFSPolicy(FCFSPolicy):
    # The backlog heap's upkeep is off: the scan needs none.  (Written out in each class rather
    # than mixed in: compiled classes, ``loraplex/native.py``, take one base.)
    def _head_changed(self, tenant: str) -> None:
        return None

    def _counter_changed(self, tenant: str) -> None:
        return None

    def _reindex(self) -> None:
        return None

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        best: tuple[int, QueuedRequest] | None = None
        for q in self._queues.values():
            if best is None or q[0][0] < best[0]:
                best = q[0]
        return None if best is None else best[1]
