"""Which gateways live, and which requests a gone gateway leaves behind.

A gateway that dies (a crash, its node lost) takes its clients' connections with it, but its
requests would run on to ``max_tokens``, streaming to nobody and holding batch slots and KV blocks
that other tenants wait for.  Gateways heart-beat (``GatewayHeartbeat`` every second); one heard
and then silent for ``--gateway-timeout`` is gone, and the scheduler cancels what it owns.  A
gateway never heard (an older one, a test's stand-in) is never judged.  Plain bookkeeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from loraplex.protocol import GatewayHeartbeat, SubmitRequest
from loraplex.scheduler.preemption import Parked
from loraplex.scheduler.recovery import InFlight

log = logging.getLogger(__name__)


class GatewayLiveness:
    """Owns when each gateway was last heard (monotonic seconds)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # 0: never judged gone
        self.last_heard: dict[str, float] = {}

    def heard(self, gateway_id: str, now: float) -> None:
        self.last_heard[gateway_id] = now

    def expire(self, now: float) -> list[str]:
        """The gateways silent for ``timeout_s``, forgotten (a later heartbeat re-adds one)."""
        if self.timeout_s <= 0:
            return []
        gone = [g for g, t in self.last_heard.items() if now - t >= self.timeout_s]
        for g in gone:
            del self.last_heard[g]
        return gone


def owned_by(
    gateway_id: str,
    queued: Mapping[str, SubmitRequest],
    inflight: Mapping[str, InFlight],
    retry: Iterable[InFlight],
    parked: Mapping[str, Parked] | None = None,
) -> list[str]:
    """The ids of the requests ``gateway_id`` submitted that are queued, placed, to re-place or
    parked (preempted)."""
    rids = [rid for rid, sub in queued.items() if sub.gateway_id == gateway_id]
    rids += [rid for rid, job in inflight.items() if job.submit.gateway_id == gateway_id]
    rids += [job.submit.request_id for job in retry if job.submit.gateway_id == gateway_id]
    rids += [rid for rid, p in (parked or {}).items() if p.job.submit.gateway_id == gateway_id]
    return rids


class GatewayWatch:
    """The scheduler's side: hears gateways, and cancels (``cancel``, the path of a client's
    cancel) the requests of one gone, while ``leading``.  Works on the service's request tables,
    shared by reference; ``cancelled`` counts the requests so cancelled."""

    def __init__(
        self,
        timeout_s: float,
        queued: Mapping[str, SubmitRequest],
        inflight: Mapping[str, InFlight],
        retry: list[InFlight],
        parked: Mapping[str, Parked],
        cancel: Callable[[str], Awaitable[None]],
        leading: Callable[[], bool],
    ) -> None:
        self.liveness = GatewayLiveness(timeout_s)
        self._queued, self._inflight, self._retry = queued, inflight, retry
        self._parked = parked
        self._cancel, self._leading = cancel, leading
        self.cancelled = 0

    async def on_heartbeat(self, hb: GatewayHeartbeat) -> None:
        self.liveness.heard(hb.gateway_id, time.monotonic())

    async def check(self, now: float) -> None:
        for gateway_id in self.liveness.expire(now):
            rids = owned_by(gateway_id, self._queued, self._inflight, self._retry, self._parked)
            if not rids or not self._leading():
                continue
            log.warning("gateway %s stopped responding; cancelling its %d requests",
                        gateway_id, len(rids))  # fmt: skip
            for rid in rids:
                await self._cancel(rid)
            self.cancelled += len(rids)
