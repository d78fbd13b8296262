"""What the gateway knows about serving capacity, for ``/ready``.

The scheduler broadcasts ``SchedulerStats`` every second (``Subjects.STATS``), with ``pools``: the
live, non-draining workers it sees per role.  The gateway is ready only while a recent broadcast
showed a worker set that can serve a request end to end: a colocated worker, or a prefill and a
decode worker.  No broadcast (no scheduler) or an old one means not ready, so a load balancer or
Kubernetes sends no traffic to a gateway that could only answer 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loraplex.protocol import SchedulerStats

# Stats come every second; three missed ones mean the scheduler is gone (or cut off).
STATS_FRESH_S = 3.0


def can_serve(pools: dict[str, int]) -> bool:
    return pools.get("both", 0) > 0 or (pools.get("prefill", 0) > 0 and pools.get("decode", 0) > 0)


class SchedulerView:
    def __init__(
        self, fresh_s: float = STATS_FRESH_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fresh_s = fresh_s
        self.clock = clock
        self.pools: dict[str, int] = {}
        self.seen_at: float | None = None  # last broadcast of any scheduler
        self.capable_at: float | None = None  # last broadcast that showed a serving worker set

    async def on_stats(self, stats: SchedulerStats) -> None:
        now = self.clock()
        pools = dict(stats.pools)
        if not pools and stats.workers:  # a scheduler from before ``pools``: trust its workers
            pools = {"both": len(stats.workers)}
        self.pools, self.seen_at = pools, now
        if can_serve(pools):
            self.capable_at = now

    def _fresh(self, at: float | None) -> bool:
        return at is not None and self.clock() - at <= self.fresh_s

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(can serve now, detail for the /ready body)."""
        detail = {"scheduler": self._fresh(self.seen_at), "pools": dict(self.pools)}
        return self._fresh(self.capable_at), detail
