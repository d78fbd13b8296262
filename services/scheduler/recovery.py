"""Admitted requests in flight, and their recovery, as methods of ``SchedulerService``.

A request whose worker died (its heartbeats stopped), failed it (``RequestProgress(failed)``) or
does not hold it (an assignment lost while the worker resubscribed after a NATS restart) is
re-placed first if no token of it has reached the client yet; otherwise it fails with a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loraplex.protocol import RequestError, Subjects, SubmitRequest, WorkerHeartbeat
from loraplex.scheduler.workers import Placement, WorkerState

if TYPE_CHECKING:
    from loraplex.scheduler.service import SchedulerService

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """An admitted request placed on workers, tracked until it finishes."""

    submit: SubmitRequest
    placement: Placement
    attempt: int = 0
    tokens_sent: bool = False  # a token reached (or may have reached) the client: no silent retry
    prefill_done: bool = False
    completion_tokens: int = 0
    workers: set[str] = field(default_factory=set)
    assigned_at: float = 0.0  # monotonic
    missing_since: float | None = None  # its worker's heartbeats stopped listing it

    @property
    def holder(self) -> str:
        """The worker that must be holding the request now."""
        p = self.placement
        return p.decode if p.decode and self.prefill_done else p.prefill


class RecoveryMixin:
    """Re-placing or failing requests their worker lost (mixed into ``SchedulerService``)."""

    async def _check_held(self: SchedulerService, hb: WorkerHeartbeat, now: float) -> None:
        """Recover requests their worker does not hold: an assignment published while the worker
        was resubscribing after a NATS restart is lost, and nothing else would ever notice."""
        active, grace = set(hb.active or ()), self.s.lost_request_grace_s
        for job in list(self.inflight.values()):
            if job.holder != hb.worker_id or now - job.assigned_at < grace:
                continue
            if job.submit.request_id in active:
                job.missing_since = None
            elif job.missing_since is None:
                job.missing_since = now  # a finish report may still be on its way
            elif now - job.missing_since >= grace:
                await self._recover(job, f"worker {hb.worker_id} does not hold the request")

    async def _recover(self: SchedulerService, job: InFlight, reason: str) -> None:
        """Re-place a request that no token of has reached the client; otherwise fail it clearly."""
        rid = job.submit.request_id
        for wid in job.workers:
            self.registry.release(wid, rid)
        if not job.tokens_sent and job.attempt + 1 < self.s.max_attempts:
            job.attempt += 1
            log.info("re-dispatching %s (attempt %d): %s", rid, job.attempt + 1, reason)
            self.inflight.pop(rid, None)
            self.retry.append(job)
            return
        self.inflight.pop(rid, None)
        self.policy.on_finish(rid, job.completion_tokens)
        self._counters_dirty = True
        message = f"request failed after {job.attempt + 1} attempt(s): {reason}"
        await self._bus().publish(
            Subjects.stream(job.submit.gateway_id), RequestError(rid, 503, message)
        )

    async def _liveness_loop(self: SchedulerService) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.s.heartbeat_timeout_s / 4))
            try:
                for dead in self.registry.expire(time.monotonic()):
                    await self._worker_died(dead)
                if self._counters_dirty:
                    await self._save_counters()
            except Exception:
                log.exception("liveness check failed")

    async def _worker_died(self: SchedulerService, dead: WorkerState) -> None:
        wid = dead.hb.worker_id
        self.affinity.forget(wid)
        log.warning(
            "worker %s stopped heart-beating; recovering its %d requests", wid, len(dead.requests)
        )
        for rid in list(dead.requests):
            job = self.inflight.get(rid)
            if job is not None and wid in job.workers:
                job.workers.discard(wid)
                await self._recover(job, f"worker {wid} stopped responding")
        self._kick.set()
