"""What the leader does with a worker's report on a request (``RequestProgress``): tokens (charged
to the tenant, their ids kept for a migration), the K/V hand-over, the end, or a retryable failure
(re-placed by ``recovery.py``).  Reports on requests the leader does not run go to the takeover
(unclaimed after a failover) or get the cancel sent again (cancelled, yet still running)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from loraplex.protocol import RequestProgress
from loraplex.scheduler.policies.base import FairnessPolicy
from loraplex.scheduler.preemption import Preemption
from loraplex.scheduler.recovery import InFlight, Recovery
from loraplex.scheduler.takeover import Takeover
from loraplex.scheduler.workers import WorkerRegistry

log = logging.getLogger(__name__)


class ProgressHandler:
    """Works on the service's ``inflight`` table (shared by reference); ``kick`` wakes the
    dispatch loop, ``counters_changed`` marks the fairness counters for saving."""

    def __init__(
        self,
        registry: WorkerRegistry,
        policy: FairnessPolicy,
        takeover: Takeover,
        recovery: Recovery,
        preemption: Preemption,
        *,
        inflight: dict[str, InFlight],
        leading: Callable[[], bool],
        kick: Callable[[], None],
        counters_changed: Callable[[], None],
    ) -> None:
        self.registry, self.policy = registry, policy
        self.takeover, self.recovery, self.preemption = takeover, recovery, preemption
        self.inflight = inflight
        self.leading, self.kick, self.counters_changed = leading, kick, counters_changed

    async def on_progress(self, p: RequestProgress) -> None:
        if not self.leading():
            return
        job = self.inflight.get(p.request_id)
        if job is None:
            # A preempted request's report sent before its worker let it go, or one of a
            # request not yet claimed after a failover.
            if await self.preemption.on_progress(p) or self.takeover.on_progress(p):
                self.counters_changed()
            else:
                await self.recovery.cancel_again(p)
            return
        if await self.recovery.stale_report(job, p):
            return
        if p.event == "tokens":
            if p.worker_id == job.placement.decode:  # the decode worker has it, whatever the
                job.release_prefill(self.registry, job.placement.prefill)  # hand-off report says
            job.record_tokens(p)  # their ids too: a migration resumes from them
            self.policy.on_output_tokens(job.submit.tenant, p.request_id, p.new_tokens)
            self.counters_changed()
            job.release_prefill(self.registry, p.worker_id)
        elif p.event == "handoff":
            if p.decode_worker and p.decode_worker != job.placement.decode:
                # An earlier attempt's K/V, sent to a decode worker this one does not use: the
                # request is not there (check_held recovers it if the prefill worker lets go).
                log.info("ignoring hand-off of %s to %s: placed on %s now",
                         p.request_id, p.decode_worker, job.placement.decode)  # fmt: skip
            else:
                job.release_prefill(self.registry, p.worker_id)
        elif p.event in ("finished", "error"):
            self.inflight.pop(p.request_id, None)
            self.policy.on_finish(p.request_id, p.completion_tokens)
            self.counters_changed()
            for wid in job.workers:
                self.registry.release(wid, p.request_id)
        elif p.event == "failed":
            if p.suspect:
                self.registry.suspect(p.suspect)
            await self.recovery.recover(job, p.message or f"worker {p.worker_id} failed")
        self.kick()
