"""First come, first served across all tenants (the baseline every engine ships).

``pick`` returns the queued request that was enqueued first, whatever its tenant.  Counters are
still kept (weighted service charged, as in every policy) for observability; they never influence
the order.  Invariant: requests are admitted in global ``enqueue`` order.
"""

from __future__ import annotations

from .base import FairnessPolicy, QueuedRequest


class FCFSPolicy(FairnessPolicy):
    name = "fcfs"

    def pick(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        best: tuple[int, QueuedRequest] | None = None
        for q in self._queues.values():
            if best is None or q[0][0] < best[0]:
                best = q[0]
        return None if best is None else best[1]
