"""First come, first served across all tenants (the baseline every engine ships).

``pick`` returns the queued request that was enqueued first, whatever its tenant.  Counters are
still kept (weighted service charged, as in every policy) for observability; they never influence
the order.  Invariant: requests are admitted in global ``enqueue`` order.

Backlogged tenants sit in a lazy min-heap keyed by their head's enqueue seq (``backlog_heap.py``),
so ``pick`` is O(log n); ``linear.py`` keeps the scan it replaced as the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from .backlog_heap import BacklogHeap, Key
from .base import FairnessPolicy, QueuedRequest


class FCFSPolicy(FairnessPolicy):
    name: ClassVar[str] = "fcfs"

    def __init__(
        self, weights: Mapping[str, float] | None = None, *, w_p: float = 1.0, w_q: float = 2.0
    ) -> None:
        super().__init__(weights, w_p=w_p, w_q=w_q)
        self._backlog = BacklogHeap(self._key, lambda: self._queues)

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        tenant = self._backlog.top()
        return None if tenant is None else self._queues[tenant][0][1]

    def _key(self, tenant: str) -> Key | None:
        q = self._queues.get(tenant)
        return None if q is None else (q[0][0],)

    def _head_changed(self, tenant: str) -> None:
        self._backlog.touch(tenant)

    def _reindex(self) -> None:
        self._backlog.rebuild()
