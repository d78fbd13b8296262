"""Preemption: a tenant that holds more than its share of the batch slots gives one back when a
tenant below its share waits for room.

Admission is bounded by committed capacity and requests are not preempted by the fairness policy
(VTC's bound assumes a non-preemptive server), so a tenant that got in first can hold every slot
for as long as its requests run: two requests with ``n=16`` and ``max_tokens=1000`` filled a
32-slot worker for a minute, and every other tenant waited (or got the 503 of ``--max-queue-wait``).

When the request at the head of the policy's queue has found no room for ``--preempt-after``
seconds, the scheduler takes the decoding request of the tenant furthest over its share (running
requests over its weight) whose release makes room for it, the one placed last, and *parks* it:
its workers abort it (``CancelRequest(remember=False)``: it may come back to them), its capacity is
released, and it keeps its tokens so far (``migration.TokenLog``) and its charge in the policy.  A
parked request is placed again like a migrated one (prompt + tokens so far prefilled, the tokens
replayed to the gateway, which drops those it has): its client sees a pause, never an error.

Shares (``running(t) / weight(t)``) keep it from thrashing: tenant A is preempted for B only while
``share(A) > share(B after one more)``, and A's parked request goes back before B's queued one only
while ``share(A after one more) <= share(B)``, so neither decision undoes the other.  A parked
request goes back once its old workers' heartbeats no longer list it (every token report they sent
has then arrived, so none is lost), before its tenant's newer requests, and otherwise when no
other tenant waits.  Only policies that share service fairly (VTC, LCF) preempt.  Pure Python.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from loraplex.protocol import CancelRequest, Message, RequestProgress, Subjects, SubmitRequest
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.recovery import InFlight
from loraplex.scheduler.workers import WorkerRegistry

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # workers whose heartbeats list no requests: how long a parked one stays parked
VICTIMS_TRIED = 8  # candidates checked for the queue (each a release, a placement, a commit)

Publish = Callable[[str, Message], Awaitable[None]]


@dataclass
class Parked:
    """A preempted request waiting to be placed again."""

    job: InFlight
    since: float  # monotonic
    workers: tuple[str, ...]  # where it ran: it goes back once none of them lists it


@dataclass
class Preemption:
    """Parks requests of over-share tenants (``check``) and says which parked request goes back
    before the policy's next pick (``resume_before``).  Works on the service's ``inflight`` and
    ``parked`` tables, shared by reference; ``stalled`` reads the head request that found no
    room at the last dispatch."""

    after_s: float  # 0: never
    registry: WorkerRegistry
    policy: FairnessPolicy
    inflight: dict[str, InFlight]
    parked: dict[str, Parked]
    publish: Publish
    stalled: Callable[[], SubmitRequest | None]
    preempted: dict[str, int] = field(default_factory=dict)  # tenant -> requests parked
    # request id -> when a request was parked to free an adapter slot for it
    _helped: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.after_s > 0 and self.policy.shares_fairly

    def share(self, counts: dict[str, int], tenant: str, extra: int = 0) -> float:
        return (counts.get(tenant, 0) + extra) / self.policy.weight(tenant)

    # ---- parking -----------------------------------------------------------------------------
    async def check(self, now: float) -> InFlight | None:
        """Park one request for a tenant below its share that waited ``after_s``: for the head
        of the queue (no worker has room for it), else for a placed request that waits on its
        worker for an adapter slot (every slot pinned by other tenants' adapters); returns it."""
        if not self.enabled:
            return None
        victim = self._for_the_queue(now) or self._for_an_adapter_slot(now)
        if victim is not None:
            await self.park(victim, now)
        return victim

    def _for_the_queue(self, now: float) -> InFlight | None:
        sub = self.stalled()
        if sub is None:
            return None
        head = self.policy.peek()
        if head is None or head.request_id != sub.request_id or now - head.arrival < self.after_s:
            return None  # a request to place again (not the policy's) or a short wait
        if self._fits(sub):
            return None  # room freed since the last dispatch, which will place it
        return self.choose(head, sub)

    def choose(self, head: QueuedRequest, sub: SubmitRequest) -> InFlight | None:
        """The request to park for ``head``: of the tenant furthest over its share first, the
        one placed last first, among those whose release makes room for ``sub``."""
        counts = running_per_tenant(self.inflight.values())
        for tried, job in enumerate(self._candidates(counts, head.tenant, 1)):
            if tried >= VICTIMS_TRIED:
                return None
            if self._frees_room(job, sub):
                return job
        return None

    def _for_an_adapter_slot(self, now: float) -> InFlight | None:
        """A request placed ``after_s`` ago that is not decoding yet, on a worker whose adapter
        slots are all pinned, the only one there with its adapter: it waits for a slot.  The
        victim runs there, alone with its adapter (its end frees that slot)."""
        if not any(w.slots_full for w in self.registry.workers.values()):
            self._forget_helped()
            return None  # no worker makes a request wait for a slot: no scan of the requests
        counts: dict[str, int] | None = None
        for job in list(self.inflight.values()):
            sub = job.submit
            if not sub.adapter or now - job.assigned_at < self.after_s or not starting(job):
                continue
            helped = self._helped.get(sub.request_id)
            if helped is not None and now - helped < self.after_s:
                continue  # a slot is on its way: the worker takes a moment to use it
            # Where it decodes: a handed-over request waits in its engine for the adapter's slot.
            w = self.registry.workers.get(job.placement.decode or job.placement.prefill)
            if w is None or not w.slots_full or w.adapter_runs.get(sub.adapter, 0) != 1:
                continue
            counts = counts or running_per_tenant(self.inflight.values())
            for victim in self._candidates(counts, sub.tenant, 0):
                vid, adapter = victim.submit.request_id, victim.submit.adapter or ""
                if vid in w.requests and w.adapter_runs.get(adapter, 0) == 1:
                    self._helped[sub.request_id] = now
                    for held in victim.workers:
                        self.registry.release(held, vid)
                    return victim
        self._forget_helped()
        return None

    def _candidates(self, counts: dict[str, int], tenant: str, extra: int) -> Iterator[InFlight]:
        """Decoding requests of the tenants over ``tenant``'s share (with ``extra`` more
        running), the furthest over first, each tenant's placed last first."""
        floor = self.share(counts, tenant, extra)
        over = [t for t in counts if t != tenant and self.share(counts, t) > floor]
        over.sort(key=lambda t: -self.share(counts, t))
        for t in over:
            jobs = [j for j in self.inflight.values() if j.submit.tenant == t and preemptible(j)]
            yield from sorted(jobs, key=lambda j: -j.assigned_at)

    def _forget_helped(self) -> None:
        for rid in [r for r in self._helped if r not in self.inflight]:
            del self._helped[rid]

    def _fits(self, sub: SubmitRequest) -> bool:
        """Whether some worker set has room for ``sub`` now."""
        prompt = len(sub.prompt_token_ids)
        return self.registry.place(sub.adapter, prompt, committed_tokens(sub)) is not None

    def _frees_room(self, job: InFlight, sub: SubmitRequest) -> bool:
        """Whether releasing ``job`` lets ``sub`` be placed (it is released for good if so)."""
        rid, total = job.submit.request_id, committed_tokens(job.submit)
        for wid in job.workers:
            self.registry.release(wid, rid)
        if self._fits(sub):
            return True
        for wid in job.workers:  # no: as it was
            self.registry.commit(wid, rid, total, job.submit.adapter)
        return False

    async def park(self, job: InFlight, now: float) -> None:
        """Take ``job`` (already released) off its workers and keep it to place again."""
        sub = job.submit
        rid, workers = sub.request_id, tuple(job.workers)
        self.inflight.pop(rid, None)
        job.workers = set()
        job.attempt += 1  # its workers run the next placement even if they saw this one
        job.preemptions += 1
        self.parked[rid] = Parked(job, now, workers)
        self.preempted[sub.tenant] = self.preempted.get(sub.tenant, 0) + 1
        log.info("preempted %s of %s after %d tokens, for a tenant below its share",
                 rid, sub.tenant, len(job.tokens.ids))  # fmt: skip
        for wid in workers:
            await self.publish(
                Subjects.worker(wid), CancelRequest(rid, "preempted", remember=False)
            )

    # ---- going back --------------------------------------------------------------------------
    def settled(self, p: Parked, now: float) -> bool:
        """Every token its old workers generated has been reported: their heartbeats no longer
        list it (reports and heartbeats of one worker arrive in order), or they are gone."""
        for wid in p.workers:
            w = self.registry.workers.get(wid)
            if w is None:
                continue
            if w.hb.active is None:  # a worker that does not list its requests: wait a while
                if now - p.since < SETTLE_S:
                    return False
            elif p.job.submit.request_id in w.hb.active:
                return False
        return True

    def resume_before(
        self, head: QueuedRequest | None, counts: dict[str, int] | None, now: float
    ) -> Parked | None:
        """The parked request to place before ``head`` (the policy's pick; None: nothing queued),
        or None.  ``counts``: running requests per tenant (``running_per_tenant``), kept by the
        caller as it places."""
        best: Parked | None = None
        for p in self.parked.values():
            if not self.settled(p, now):
                continue
            tenant = p.job.submit.tenant
            if head is not None and tenant != head.tenant:
                assert counts is not None
                if self.share(counts, tenant, 1) > self.share(counts, head.tenant):
                    continue  # it would be preempted again for ``head``'s tenant
            if best is None or p.since < best.since:
                best = p
        return best

    async def on_progress(self, p: RequestProgress) -> bool:
        """A report on a parked request (sent before its worker aborted it): its tokens are
        kept and charged, its end ends it.  False: not a parked request."""
        parked = self.parked.get(p.request_id)
        if parked is None or p.worker_id not in parked.workers:
            return False
        job = parked.job
        if p.event == "tokens":
            job.record_tokens(p)
            self.policy.on_output_tokens(job.submit.tenant, p.request_id, p.new_tokens)
        elif p.event in ("finished", "error"):  # it ended before the abort reached the worker
            del self.parked[p.request_id]
            self.policy.on_finish(p.request_id, p.completion_tokens)
        return True

    def take(self, request_id: str) -> InFlight | None:
        """Remove and return a parked request (cancelled, or its gateway gone)."""
        p = self.parked.pop(request_id, None)
        return None if p is None else p.job

    def expire(self, max_wait_s: float, now: float) -> list[tuple[InFlight, float]]:
        """Parked requests waiting ``max_wait_s`` or longer (``<= 0``: none), taken out and
        settled in the policy; the caller fails them as overloaded."""
        if max_wait_s <= 0:
            return []
        out = [(p.job, now - p.since) for p in self.parked.values() if now - p.since >= max_wait_s]
        for job, _ in out:
            del self.parked[job.submit.request_id]
            self.policy.on_finish(job.submit.request_id, job.completion_tokens)
        return out


def running_per_tenant(jobs: Iterable[InFlight]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.submit.tenant] = counts.get(job.submit.tenant, 0) + 1
    return counts


def preemptible(job: InFlight) -> bool:
    """Decoding on its worker, with a token log it can resume from: nothing of it is on its way
    to a worker (assignment, K/V), and parking it loses no work but the recompute."""
    return job.decoding and job.tokens.resumable(
        job.submit.sampling.max_tokens, job.completion_tokens
    )


def starting(job: InFlight) -> bool:
    """Not decoding yet (``InFlight.decoding``): it may wait for an adapter slot."""
    return not job.decoding


def committed_tokens(sub: SubmitRequest) -> int:
    """What a decoding request holds on its worker (``Dispatcher._claim``): its full length."""
    return len(sub.prompt_token_ids) + sub.sampling.max_tokens
