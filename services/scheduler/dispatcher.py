"""Dispatch: admit queued requests in the fairness policy's order, only when workers have
committed room, and send each its assignment.

Re-placements (admitted requests whose worker failed early) go first.  Then the policy's pick is
placed (``WorkerRegistry.place``, with prefix affinity) and admitted; when it does not fit the
dispatcher waits for capacity rather than skip ahead (strict policy order).  Decisions come in
rounds of up to ``ROUND``: a round's assignments are written ahead to the replicas' ledger
(``record``, one fenced write) before any of them is published.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from loraplex.prefix_keys import reusable_blocks
from loraplex.protocol import Message, PrefetchAdapter, PrefillAssign, Subjects, SubmitRequest
from loraplex.scheduler.ledger import LedgerEntry
from loraplex.scheduler.placement import Placement
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.preemption import Preemption, running_per_tenant
from loraplex.scheduler.prefix_affinity import CachedBlocks, PrefixAffinity
from loraplex.scheduler.recovery import InFlight
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry

ROUND = 64  # decisions per round: one ledger write, then the event loop runs again


class Dispatcher:
    """Works on the service's request tables, shared by reference: ``queued`` (request id ->
    SUBMIT, in the policy's queue), ``inflight`` (placed), ``retry`` (admitted, to re-place)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        policy: FairnessPolicy,
        registry: WorkerRegistry,
        affinity: PrefixAffinity,
        *,
        queued: dict[str, SubmitRequest],
        inflight: dict[str, InFlight],
        retry: list[InFlight],
        publish: Callable[[str, Message], Awaitable[None]],
        assign: Callable[[str, PrefillAssign, Callable[[], bool]], None] | None = None,
        record: Callable[[list[LedgerEntry]], Awaitable[bool]],
        counters_changed: Callable[[], None],
        on_admit: Callable[[QueuedRequest, float], None],
        preemption: Preemption | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.registry = registry
        self.affinity = affinity
        self.submits = queued
        self.inflight = inflight
        self.retry = retry
        self._publish = publish
        # Sends an assignment until its worker acknowledges it (``Outbox.assign``), to workers
        # whose heartbeats say they answer; None: assignments are published.
        self._assign = assign
        self._record = record
        self._counters_changed = counters_changed
        self.epoch = 0  # the leader's term, fencing its assignments (set when it leads)
        # The request at the head of the queue that found no room at the last dispatch (None:
        # nothing waits for room): the pools without room for it have a queue (metrics.py).
        self.stalled: SubmitRequest | None = None
        self._on_admit = on_admit  # queue-time metrics
        self.preemption = preemption  # its parked requests go back in turn

    async def dispatch(self, now: float) -> None:
        """Place what can be placed now: re-placements first, then the policy's order.

        Rounds of at most ``ROUND`` decisions: each placement is claimed at once (capacity
        committed, affinity recorded), so the next decision sees it; then the round's ledger
        entries go to the replicas' ledger in one fenced write (write-ahead: one Redis round
        trip per round, not per request), and only then are its assignments published."""
        while True:
            placed = self._decide(now)
            if not placed:
                return
            if not await self._record([self._entry(job) for job in placed]):
                return  # this replica no longer leads: publish nothing
            for job in placed:
                await self._send(job)
            if len(placed) < ROUND:
                return

    def _decide(self, now: float) -> list[InFlight]:
        """Up to ``ROUND`` placements, claimed; stops at the first request without room."""
        placed: list[InFlight] = []
        while self.retry and len(placed) < ROUND:  # already admitted and charged: first
            job = self.retry[0]
            placement, cached = self._place(job.submit, len(job.generated))
            if placement is None:
                self.stalled = job.submit
                return placed
            self.retry.pop(0)
            self._claim(job, placement, cached)
            placed.append(job)
        preemption = self.preemption
        parked = preemption.parked if preemption is not None else {}
        counts = running_per_tenant(self.inflight.values()) if parked else {}
        while len(placed) < ROUND:
            q = self.policy.pick(now)
            back = None
            if parked and preemption is not None:
                back = preemption.resume_before(q, counts, now)
            if back is not None:  # a preempted request's turn (preemption.py)
                job = back.job
                placement, cached = self._place(job.submit, len(job.generated))
                if placement is None:
                    self.stalled = job.submit
                    return placed
                del parked[job.submit.request_id]
                self._claim(job, placement, cached)
                placed.append(job)
                counts[job.submit.tenant] = counts.get(job.submit.tenant, 0) + 1
                continue
            if q is None:
                self.stalled = None
                return placed
            sub = self.submits[q.request_id]
            placement, cached = self._place(sub)
            if placement is None:
                self.stalled = sub
                return placed  # strict policy order: wait for capacity rather than skip ahead
            self.policy.admit(q, now)
            self._on_admit(q, now)
            self._counters_changed()
            del self.submits[q.request_id]
            job = InFlight(sub, placement)
            self._claim(job, placement, cached)
            placed.append(job)
            if parked:
                counts[q.tenant] = counts.get(q.tenant, 0) + 1
        return placed

    def _place(
        self, sub: SubmitRequest, resumed: int = 0
    ) -> tuple[Placement | None, CachedBlocks | None]:
        """Where ``sub`` goes (None: no room now), and its prompt's view of the prefix affinity
        (its block keys, computed once for placement and the record).  ``resumed``: a migrated
        request's tokens so far, prefilled with its prompt."""
        total = len(sub.prompt_token_ids) + sub.sampling.max_tokens
        cached = None
        if self.settings.prefix_routing:
            keys = sub.prefix_keys
            if keys is not None and len(keys) != reusable_blocks(len(sub.prompt_token_ids)):
                keys = None  # not this prompt's: computed here
            cached = self.affinity.cached_blocks(
                sub.adapter, sub.prompt_token_ids, keys, sub.cache_salt
            )
        prefill = len(sub.prompt_token_ids) + resumed
        return self.registry.place(sub.adapter, prefill, total, cached), cached

    def _claim(self, job: InFlight, placement: Placement, cached: CachedBlocks | None) -> None:
        """Take ``placement`` for ``job``: in flight, its capacity committed, its prompt recorded
        in the prefix affinity (all before the round's one await)."""
        sub = job.submit
        rid = sub.request_id
        total = len(sub.prompt_token_ids) + sub.sampling.max_tokens
        job.placement, job.prefill_done = placement, False
        job.placed_tokens = len(job.generated)  # not decoding (nor preemptible) until it is here
        job.assigned_at, job.missing_since = time.monotonic(), None
        job.workers = {placement.prefill} | ({placement.decode} if placement.decode else set())
        self.inflight[rid] = job
        for wid in job.workers if cached is not None else ():
            worker = self.registry.workers.get(wid)
            if worker is not None:
                self.affinity.record(wid, cached.keys(), worker.hb.total_blocks)
        prefill = len(sub.prompt_token_ids) + len(job.generated)  # + a migrated one's tokens
        share = total if not placement.decode else prefill
        self.registry.commit(placement.prefill, rid, share, sub.adapter)
        if placement.decode:
            self.registry.commit(placement.decode, rid, total, sub.adapter)

    async def _send(self, job: InFlight) -> None:
        sub, placement = job.submit, job.placement
        if placement.decode and sub.adapter:  # the decode worker pages it in during prefill
            await self._publish(Subjects.worker(placement.decode), PrefetchAdapter(sub.adapter))
        wid = placement.prefill
        msg = PrefillAssign(sub, placement.decode, job.attempt, self.epoch, job.generated)
        worker = self.registry.workers.get(wid)
        if self._assign is None or worker is None or not worker.hb.acks_assignments:
            await self._publish(Subjects.worker(wid), msg)
            return
        rid, attempt, inflight = sub.request_id, job.attempt, self.inflight
        # Resent while this placement stands: not once the request was recovered (a new
        # attempt), cancelled or finished.
        self._assign(wid, msg, lambda: inflight.get(rid) is job and job.attempt == attempt)

    @staticmethod
    def _entry(job: InFlight) -> LedgerEntry:
        sub, p = job.submit, job.placement
        total = len(sub.prompt_token_ids) + sub.sampling.max_tokens
        return LedgerEntry(
            sub.request_id, sub.tenant, p.prefill, p.decode, job.attempt,
            len(sub.prompt_token_ids), total, sub.adapter or "",
        )  # fmt: skip
