"""What the leader does with a gateway's SUBMIT and CANCEL.

SUBMIT is idempotent by request id: the same request sent again (a retry, a resubmission after a
failover) is accepted and ignored.  A resubmitted request the new leader does not know is adopted
where the ledger placed it (``takeover.py``), failed if its tokens already streamed and it is no
longer placed, or queued like a new one.  A new one is refused (``admission.py``) or queued in its
tenant's queue.  CANCEL takes a request out wherever it is: queued, unclaimed after a takeover,
placed (its workers are told), or waiting to be re-placed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loraplex.protocol import CancelRequest, RequestError, Subjects, SubmitReply, SubmitRequest
from loraplex.scheduler.admission import refusal
from loraplex.scheduler.outbox import Outbox
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.preemption import Parked
from loraplex.scheduler.recovery import InFlight, Recovery
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.takeover import Takeover
from loraplex.scheduler.workers import WorkerRegistry

MAX_WAITED_S = 3600.0  # a resubmission's ``waited_s`` beyond this (or NaN) says nothing true


class Intake:
    """Works on the service's request tables (shared by reference: ``queued``, ``inflight``,
    ``retry``, ``cancelled``); ``kick`` wakes the dispatch loop, ``counters_changed`` marks the
    fairness counters for saving, ``listening_since`` reads when heartbeats were first heard."""

    def __init__(
        self,
        settings: SchedulerSettings,
        registry: WorkerRegistry,
        policy: FairnessPolicy,
        takeover: Takeover,
        recovery: Recovery,
        outbox: Outbox,
        *,
        queued: dict[str, SubmitRequest],
        inflight: dict[str, InFlight],
        retry: list[InFlight],
        cancelled: dict[str, float],
        leading: Callable[[], bool],
        listening_since: Callable[[], float],
        kick: Callable[[], None],
        counters_changed: Callable[[], None],
        queue_limits: dict[str, int] | None = None,
        parked: dict[str, Parked] | None = None,
    ) -> None:
        self.s = settings
        self.registry, self.policy = registry, policy
        self.takeover, self.recovery, self.outbox = takeover, recovery, outbox
        self.queued, self.inflight, self.retry = queued, inflight, retry
        self.cancelled = cancelled
        self.leading, self.listening_since = leading, listening_since
        self.kick, self.counters_changed = kick, counters_changed
        # tenant -> its own queue limit (the tenants file's max_queue; read at each SUBMIT)
        self.queue_limits = queue_limits if queue_limits is not None else {}
        self.parked = parked if parked is not None else {}  # preempted, to place again

    async def on_submit(self, sub: SubmitRequest) -> SubmitReply:
        now = time.monotonic()
        if sub.resubmit and not self.known(sub.request_id):
            reply = await self._resubmitted(sub, now)
            if reply is not None:
                return reply
        return self.submit(sub, now)

    def known(self, rid: str) -> SubmitRequest | None:
        """The request of that id this scheduler queues or runs (a SUBMIT sent again)."""
        if rid in self.queued:
            return self.queued[rid]
        job = self.inflight.get(rid) or next(
            (j for j in self.retry if j.submit.request_id == rid), None
        )
        if job is None and rid in self.parked:
            job = self.parked[rid].job
        return job.submit if job is not None else None

    async def _resubmitted(self, sub: SubmitRequest, now: float) -> SubmitReply | None:
        """A gateway's unfinished request after a leader change: adopt it where the ledger placed
        it, or fail it if its tokens were streamed and it is no longer placed; None: queue it."""
        rid = sub.request_id
        job = self.takeover.claim(sub, now)
        if job is not None:
            self.inflight[rid] = job
            decode = job.placement.decode
            if decode and self.registry.holds(decode, rid):
                job.release_prefill(self.registry, job.placement.prefill)
            if any(w not in self.registry.workers for w in job.workers):
                await self.recovery.recover(job, "its worker stopped during a scheduler failover")
            self.counters_changed()
            self.kick()
            return SubmitReply(rid, True)
        self.takeover.settle(rid)
        if sub.tokens_received > 0:  # streamed, and no longer placed: it finished or was lost
            msg = "the request was lost in a scheduler failover; try again"
            self.outbox.deliver(sub.gateway_id, RequestError(rid, 503, msg))
            return SubmitReply(rid, True)
        return None

    def submit(self, sub: SubmitRequest, now: float) -> SubmitReply:
        rid, tenant = sub.request_id, sub.tenant
        known = self.known(rid)
        if known is not None:  # the same SUBMIT again (a retry, a resubmission): idempotent
            if known.gateway_id == sub.gateway_id and known.tenant == tenant:
                return SubmitReply(rid, True)
            return SubmitReply(rid, False, 400, f"duplicate request id {rid!r}")
        refused = refusal(
            sub, self.registry, self.policy, self.s, len(self.queued),
            now - self.listening_since(), self.recovery.outage_s(now),
            self.queue_limits.get(tenant),
        )  # fmt: skip
        if refused is not None:
            return refused
        # A resubmission after a failover arrived when the gateway first sent it: its queue time
        # (--max-queue-wait, the queue-time metric) goes on from there.
        waited = sub.waited_s if sub.resubmit and 0.0 <= sub.waited_s <= MAX_WAITED_S else 0.0
        q = QueuedRequest(
            rid, tenant, len(sub.prompt_token_ids), sub.sampling.max_tokens, now - waited,
            sub.adapter,
        )  # fmt: skip
        self.policy.enqueue(q, now)
        self.queued[rid] = sub
        self.kick()
        return SubmitReply(rid, True)

    async def on_cancel(self, msg: CancelRequest) -> None:
        rid = msg.request_id
        if not self.leading():  # a standby remembers it, in case it takes over
            self.cancelled[rid] = time.monotonic()
            return
        for wid in self.takeover.cancel(rid):
            await self.outbox.publish(Subjects.worker(wid), msg)
        if rid in self.queued:
            self.policy.cancel(rid)
            del self.queued[rid]
            return
        job = self.inflight.pop(rid, None) or self.recovery.take_retry(rid)
        if job is None and rid in self.parked:  # its workers let it go when it was preempted
            job = self.parked.pop(rid).job
        if job is None:
            return
        self.cancelled[rid] = time.monotonic()
        self.policy.cancel(rid)
        self.counters_changed()
        for wid in job.workers:
            self.registry.release(wid, rid)
            await self.outbox.publish(Subjects.worker(wid), msg)
        self.kick()
