"""Admitted requests in flight (``InFlight``), and ``Recovery``, which re-places or fails them.

A request whose worker died (its heartbeats stopped), failed it (``RequestProgress(failed)``) or
does not hold it (an assignment lost while the worker resubscribed after a NATS restart) is
re-placed, up to ``--max-attempts`` placements in all.  One that already streamed tokens is
migrated: placed again with its tokens so far (``migration.py``), which the new worker prefills
with the prompt before decoding on.  After the last attempt it fails with a 503 naming the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loraplex.protocol import (
    CancelRequest,
    Message,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitRequest,
    WorkerHeartbeat,
)
from loraplex.scheduler.migration import TokenLog
from loraplex.scheduler.placement import Placement
from loraplex.scheduler.policies.base import FairnessPolicy
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.worker_state import WorkerState
from loraplex.scheduler.workers import WorkerRegistry

log = logging.getLogger(__name__)

CANCELLED_MEMORY_S = 60.0  # how long a cancelled request id is remembered

Publish = Callable[[str, Message], Awaitable[None]]
Deliver = Callable[[str, RequestError], None]  # a request's last message: at least once


@dataclass
class InFlight:
    """An admitted request placed on workers, tracked until it finishes."""

    submit: SubmitRequest
    placement: Placement
    attempt: int = 0
    preemptions: int = 0  # placements that were preempted (``preemption.py``): not failures
    tokens_sent: bool = False  # a token reached (or may have reached) the client
    placed_tokens: int = 0  # its tokens when it was last placed (a migrated one's so far)
    prefill_done: bool = False
    completion_tokens: int = 0
    tokens: TokenLog = field(default_factory=TokenLog)  # to resume it on another worker
    last_failure: str = ""  # why it was last re-placed: named if it finally fails
    workers: set[str] = field(default_factory=set)
    assigned_at: float = 0.0  # monotonic
    missing_since: float | None = None  # its worker's heartbeats stopped listing it

    @property
    def holder(self) -> str:
        """The worker that must be holding the request now."""
        p = self.placement
        return p.decode if p.decode and self.prefill_done else p.prefill

    @property
    def tries(self) -> int:
        """Its placements so far that were not preempted (``--max-attempts`` counts these)."""
        return self.attempt - self.preemptions + 1

    @property
    def decoding(self) -> bool:
        """Its worker decodes it: a token beyond the first since it was placed (the first is
        the prefill's, and a decode worker reports it on taking the request over, before an
        adapter slot may let it run)."""
        return self.completion_tokens > self.placed_tokens + 1

    @property
    def generated(self) -> list[int]:
        """The tokens a new placement resumes from (none before the first token)."""
        return list(self.tokens.ids) if self.tokens_sent else []

    def record_tokens(self, p: RequestProgress) -> None:
        """A worker's ``tokens`` / ``finished`` report."""
        self.tokens_sent = True
        self.completion_tokens = p.completion_tokens
        self.tokens.hear(p)

    def release_prefill(self, registry: WorkerRegistry, worker_id: str) -> None:
        """A disaggregated prefill worker is done with the request once the K/V left it."""
        p = self.placement
        if p.decode and worker_id == p.prefill and not self.prefill_done:
            self.prefill_done = True
            registry.release(worker_id, self.submit.request_id)
            self.workers.discard(worker_id)


class Recovery:
    """Re-places or fails the requests their worker lost; fails waiting requests once no worker set
    could serve them for a while; re-sends cancels to workers still working on a cancelled request.

    It owns only the start of the current outage (no worker set can serve).  The tables it works on
    belong to the scheduler service and are shared by reference: ``queued`` (request id -> submit,
    not yet admitted), ``inflight`` (request id -> admitted request), ``retry`` (admitted requests
    to re-place first; emptied in place) and ``cancelled`` (request id -> when it was cancelled).
    ``publish`` sends a message on the bus; ``counters_changed`` is called whenever it settles a
    tenant's charge in ``policy``.
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        registry: WorkerRegistry,
        policy: FairnessPolicy,
        *,
        queued: dict[str, SubmitRequest],
        inflight: dict[str, InFlight],
        retry: list[InFlight],
        cancelled: dict[str, float],
        publish: Publish,
        deliver: Deliver,
        counters_changed: Callable[[], None],
    ) -> None:
        self.s = settings
        self.registry = registry
        self.policy = policy
        self.queued = queued
        self.inflight = inflight
        self.retry = retry
        self.cancelled = cancelled
        self.publish = publish
        self.deliver = deliver
        self.counters_changed = counters_changed
        self.unservable_since: float | None = None
        self.migrated = 0  # requests placed again after tokens had streamed

    async def check_held(self, hb: WorkerHeartbeat, now: float) -> None:
        """Recover requests their worker does not hold: an assignment published while the worker
        was resubscribing after a NATS restart is lost, and nothing else would ever notice."""
        active, grace = set(hb.active or ()), self.s.lost_request_grace_s
        for job in list(self.inflight.values()):
            if job.holder != hb.worker_id or now - job.assigned_at < grace:
                continue
            if self._held_by_decode(job):
                continue
            if job.submit.request_id in active:
                job.missing_since = None
            elif job.missing_since is None:
                job.missing_since = now  # a finish report may still be on its way
            elif now - job.missing_since >= grace:
                await self.recover(job, f"worker {hb.worker_id} does not hold the request")

    async def recover(self, job: InFlight, reason: str) -> None:
        """Place the request again (from its tokens so far, when some streamed) while it has
        attempts left; otherwise fail it with a 503 naming ``reason``."""
        rid = job.submit.request_id
        for wid in job.workers:
            self.registry.release(wid, rid)
        self.inflight.pop(rid, None)
        max_tokens = job.submit.sampling.max_tokens
        resumable = not job.tokens_sent or job.tokens.resumable(max_tokens, job.completion_tokens)
        if resumable and job.tries < self.s.max_attempts:
            job.attempt += 1
            job.last_failure = reason
            if job.tokens_sent:
                self.migrated += 1
                log.info(
                    "migrating %s after %d tokens (attempt %d): %s",
                    rid,
                    len(job.tokens.ids),
                    job.attempt + 1,
                    reason,
                )
            else:
                log.info("re-dispatching %s (attempt %d): %s", rid, job.attempt + 1, reason)
            self.retry.append(job)
            return
        self.policy.on_finish(rid, job.completion_tokens)
        self.counters_changed()
        why = reason if resumable else f"{reason}; its tokens so far are not known"
        self._send_error(job.submit, f"request failed after {job.tries} attempt(s): {why}")

    async def worker_died(self, dead: WorkerState, how: str) -> None:
        """Recover the requests of a worker whose heartbeats stopped (or that ``restarted``)."""
        wid = dead.hb.worker_id
        log.warning("worker %s %s; recovering its %d requests", wid, how, len(dead.requests))
        for rid in list(dead.requests):
            job = self.inflight.get(rid)
            if job is None or wid not in job.workers:
                continue
            if wid == job.placement.prefill and self._held_by_decode(job):
                continue  # the K/V got across; only the hand-off report was lost
            job.workers.discard(wid)
            await self.recover(job, f"worker {wid} {how}")

    def _held_by_decode(self, job: InFlight) -> bool:
        """A disaggregated request its decode worker already lists as held: the prefill side is
        done even if its hand-off report never arrived (so the prefill is released)."""
        decode = job.placement.decode
        if not decode or job.prefill_done:
            return False
        if not self.registry.holds(decode, job.submit.request_id):
            return False
        job.release_prefill(self.registry, job.placement.prefill)
        return True

    def take_retry(self, request_id: str) -> InFlight | None:
        """Remove and return a request waiting to be re-placed."""
        for i, job in enumerate(self.retry):
            if job.submit.request_id == request_id:
                return self.retry.pop(i)
        return None

    async def stale_report(self, job: InFlight, p: RequestProgress) -> bool:
        """Tokens from a worker the request is no longer placed on (declared dead, yet still
        running it): ignored, and that worker is told to stop, so two copies never stream."""
        if p.event not in ("tokens", "finished") or p.worker_id in job.workers:
            return False
        log.info(
            "ignoring tokens of %s from %s, no longer its worker",
            job.submit.request_id,
            p.worker_id,
        )
        await self.publish(Subjects.worker(p.worker_id), CancelRequest(p.request_id))
        return True

    async def cancel_again(self, p: RequestProgress) -> None:
        """A worker reports work on a request that was cancelled (the cancel crossed its K/V
        hand-over, or reached a worker before the request did), or one waiting to be placed
        again (its worker was declared dead, yet runs it): tell it to stop."""
        waiting = any(j.submit.request_id == p.request_id for j in self.retry)
        if (p.request_id not in self.cancelled and not waiting) or p.event not in (
            "tokens",
            "handoff",
        ):
            return
        targets = {p.worker_id} | ({p.decode_worker} if p.decode_worker else set())
        for wid in targets:
            await self.publish(Subjects.worker(wid), CancelRequest(p.request_id))

    def outage_s(self, now: float) -> float:
        """How long no worker set could serve requests (0 while one can, or before the liveness
        tick noticed the outage)."""
        since = self.unservable_since
        return 0.0 if since is None or self.registry.can_serve() else now - since

    async def fail_waiting(self, now: float) -> None:
        """Fail queued and to-be-re-placed requests once no worker set could serve them for
        ``unavailable_timeout_s`` (a dead worker's supervisor may still be restarting it)."""
        if self.registry.can_serve():
            self.unservable_since = None
            return
        if self.unservable_since is None:
            self.unservable_since = now
            return
        if now - self.unservable_since < self.s.unavailable_timeout_s:
            return
        message = (
            f"no worker could serve the request for {self.s.unavailable_timeout_s:g}s; "
            "try again later"
        )
        for rid, sub in list(self.queued.items()):
            self.policy.cancel(rid)
            del self.queued[rid]
            self._send_error(sub, message)
        for job in self.retry:
            self.policy.on_finish(job.submit.request_id, job.completion_tokens)
            cause = f" (re-placing it after: {job.last_failure})" if job.last_failure else ""
            self._send_error(job.submit, f"request failed: {message}{cause}")
        self.retry.clear()
        self.counters_changed()

    def _send_error(self, sub: SubmitRequest, message: str) -> None:
        self.deliver(sub.gateway_id, RequestError(sub.request_id, 503, message))

    def forget_cancelled(self, now: float) -> None:
        """Forget request ids cancelled more than ``CANCELLED_MEMORY_S`` ago."""
        old = [rid for rid, t in self.cancelled.items() if now - t > CANCELLED_MEMORY_S]
        for rid in old:
            del self.cancelled[rid]
