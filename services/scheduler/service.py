"""The scheduler process: the only queue.  Admits work in the fairness policy's order, only when
workers have committed room for it; places it; tracks it until done; recovers from dead workers.

This is the composition root: it owns the bus, the lease and the request tables, and routes each
message to the parts that do the work: SUBMIT and CANCEL (``intake.py``, with the admission checks
of ``admission.py``), the workers' reports (``progress.py``), the dispatch loop
(``dispatcher.py``), sending (``outbox.py``), placement (``workers.py``, ``placement.py``),
recovery (``recovery.py``), gone gateways (``gateways.py``) and failover (``takeover.py``,
``replica.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid

from loraplex import prom
from loraplex.bus import Bus
from loraplex.protocol import (
    CancelRequest,
    GatewayHeartbeat,
    RequestError,
    SchedulerStats,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
)
from loraplex.scheduler.dispatcher import Dispatcher
from loraplex.scheduler.gateways import GatewayWatch
from loraplex.scheduler.held_requests import held
from loraplex.scheduler.intake import Intake
from loraplex.scheduler.leader import LeaseLost
from loraplex.scheduler.ledger import LedgerEntry
from loraplex.scheduler.metrics import SchedulerMetrics, scheduler_stats
from loraplex.scheduler.outbox import Outbox
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.preemption import Parked, Preemption
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.progress import ProgressHandler
from loraplex.scheduler.queue_timeout import expire_queued, overloaded_message
from loraplex.scheduler.recovery import InFlight, Recovery
from loraplex.scheduler.replica import Replica
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.takeover import Takeover
from loraplex.scheduler.worker_state import WorkerState
from loraplex.scheduler.workers import WorkerRegistry
from loraplex.tenants import Tenants
from loraplex.tenants_watch import LiveTenants
from loraplex.terminal import serve_progress
from loraplex.timeouts import cancel_requested, wait_for

log = logging.getLogger(__name__)


class SchedulerService:
    """Owns the bus connection, the fairness policy, the worker registry, the prefix affinity and
    the request tables (``submits``: queued; ``inflight``: admitted and placed; ``retry``: admitted,
    to re-place first; ``cancelled``: recently cancelled ids).  ``recovery`` (a ``Recovery``) works
    on those tables when a worker dies, fails or loses a request."""

    def __init__(self, settings: SchedulerSettings, weights: dict[str, float]) -> None:
        self.s = settings
        self.policy = make_policy(settings.fairness, weights, **settings.policy_options())
        self.registry = WorkerRegistry(settings.heartbeat_timeout_s, settings.prefix_balance)
        self.affinity = PrefixAffinity()
        self.submits: dict[str, SubmitRequest] = {}  # queued, by request id
        self.inflight: dict[str, InFlight] = {}
        self.retry: list[InFlight] = []  # admitted requests to re-place first (worker failed early)
        self.parked: dict[str, Parked] = {}  # preempted for a tenant below its share, by id
        self.bus: Bus | None = None
        # Replicas (docs/architecture.md, Scheduler replicas): with Redis, only the holder of the
        # lease leads (serves SUBMIT, dispatches); ``epoch`` fences its assignments.
        self.scheduler_id = settings.scheduler_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.replica: Replica | None = None
        self.leading = False
        self.epoch = 0
        self.deposed = asyncio.Event()  # set when this replica stepped down: the process exits
        self.takeover = Takeover(self.registry, self.policy, settings.takeover_claim_s)
        self._submit_sub: object | None = None
        # Request id -> when it was cancelled: a worker that still reports tokens for one (the
        # cancel crossed a K/V hand-over) is told again, so nothing generates for nobody.
        self.cancelled: dict[str, float] = {}
        self.outbox = Outbox()  # with the bus
        self.recovery = Recovery(  # a worker that dies, fails or loses a request
            settings, self.registry, self.policy, queued=self.submits, inflight=self.inflight,
            retry=self.retry, cancelled=self.cancelled, publish=self.outbox.publish,
            deliver=self.outbox.deliver, counters_changed=self._counters_changed,
        )  # fmt: skip
        self._kick = asyncio.Event()
        self.intake = Intake(  # SUBMIT and CANCEL
            settings, self.registry, self.policy, self.takeover, self.recovery, self.outbox,
            queued=self.submits, inflight=self.inflight, retry=self.retry,
            cancelled=self.cancelled, leading=lambda: self.leading,
            listening_since=lambda: self.listening_since, kick=self._kick.set,
            counters_changed=self._counters_changed, queue_limits={}, parked=self.parked,
        )  # fmt: skip
        self.preemption = Preemption(  # a tenant over its share of the batch gives a slot back
            settings.preempt_after_s, self.registry, self.policy, self.inflight, self.parked,
            self.outbox.publish, lambda: self.dispatcher.stalled,
        )  # fmt: skip
        self.progress = ProgressHandler(  # the workers' reports
            self.registry, self.policy, self.takeover, self.recovery, self.preemption,
            inflight=self.inflight,
            leading=lambda: self.leading, kick=self._kick.set,
            counters_changed=self._counters_changed,
        )  # fmt: skip
        self._tasks: list[asyncio.Task] = []
        self._counters_dirty = False
        self.started = False  # subscribed (the /ready of http_status.py)
        self.listening_since = time.monotonic()  # heartbeats heard since (set again by start)
        self.metrics = SchedulerMetrics(self)
        self.gateways = GatewayWatch(  # a gateway gone: cancel its requests, as its clients would
            settings.gateway_timeout_s, self.submits, self.inflight, self.retry, self.parked,
            lambda rid: self.intake.on_cancel(CancelRequest(rid)), lambda: self.leading,
        )  # fmt: skip
        self.dispatcher = Dispatcher(  # the policy's order onto workers with room
            settings, self.policy, self.registry, self.affinity, queued=self.submits,
            inflight=self.inflight, retry=self.retry, publish=self.outbox.publish,
            assign=self.outbox.assign, record=self._record,
            counters_changed=self._counters_changed, on_admit=self.metrics.admitted,
            preemption=self.preemption,
        )  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------------
    def follow_tenants(self, tenants: LiveTenants) -> None:
        """Take the tenants' queue limits now, and the weights and limits of every later
        version of the tenants file."""

        def take(new: Tenants) -> None:
            self.policy.set_weights(new.weights())
            self.intake.queue_limits.clear()
            self.intake.queue_limits.update(new.queue_limits())

        self.intake.queue_limits.update(tenants.current.queue_limits())
        tenants.on_change(take)
        prom.register(self.metrics.registry, tenants.metric_families)

    async def start(self) -> None:
        self.bus = await Bus.connect(self.s.nats_url, "scheduler")
        self.outbox.connect(self.bus)
        # Standbys listen too: a warm worker registry and the cancels of the failover gap.
        await self.bus.subscribe(Subjects.CANCEL, self.intake.on_cancel, CancelRequest)
        await self.bus.subscribe(Subjects.HEARTBEAT, self._on_heartbeat, WorkerHeartbeat)
        await self.bus.subscribe(Subjects.GATEWAYS, self.gateways.on_heartbeat, GatewayHeartbeat)
        self.listening_since = time.monotonic()
        # A worker's last report on a request comes as a request: the leader acknowledges it.
        await serve_progress(self.bus, self.progress.on_progress, lambda: self.leading)
        self._tasks = [
            asyncio.create_task(self._dispatch_loop()),
            asyncio.create_task(self._liveness_loop()),
            asyncio.create_task(self._stats_loop()),
        ]
        if self.s.redis_url:
            self.replica = Replica(
                self.bus, self.s.redis_url, self.s.redis_prefix, self.scheduler_id,
                self.s.leader_lease_s, self._lead, self._step_down,
            )  # fmt: skip
            await self.replica.start()
        else:
            await self._lead(0)
        await self.bus.flush()
        self.started = True
        log.info(
            "scheduler ready (fairness=%s, %s)",
            self.s.fairness,
            f"leading, epoch {self.epoch}" if self.leading else "standby",
        )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.leading:
            await self._save_counters()
        if self.replica is not None:
            await self.replica.stop()
        await self.outbox.close(wait_s=2.0)  # errors still on their way to gateways
        if self.bus is not None:
            await self.bus.close()

    async def _lead(self, epoch: int) -> None:
        """This replica leads from now on: take over the predecessor's state, serve SUBMIT."""
        assert self.bus is not None
        if self.replica is not None:
            running = await self.replica.counters.restore(self.policy)
            entries = await self.replica.ledger.load()
            self.replica.ledger.adopt(entries)
            self.takeover.begin(entries, running, time.monotonic())
        self.epoch, self.leading = epoch, True
        self.dispatcher.epoch = epoch
        self._submit_sub = await self.bus.serve(Subjects.SUBMIT, self._serve_submit, SubmitRequest)
        self._kick.set()

    async def _step_down(self, why: str) -> None:
        self.leading = False
        unsubscribe = getattr(self._submit_sub, "unsubscribe", None)
        if unsubscribe is not None:
            with contextlib.suppress(Exception):
                await unsubscribe()
        self.deposed.set()

    # ---- gateway -> scheduler ----------------------------------------------------------------
    async def _serve_submit(self, sub: SubmitRequest) -> SubmitReply:
        reply = await self.intake.on_submit(held(sub))  # held until it ends: its lists as tuples
        self.metrics.submitted(reply)
        if reply.accepted and self.epoch:
            reply = dataclasses.replace(reply, epoch=self.epoch)
        return reply

    def submit(self, sub: SubmitRequest, now: float) -> SubmitReply:
        """Queue (or refuse) a SUBMIT at time ``now`` (``intake.py``)."""
        return self.intake.submit(sub, now)

    # ---- dispatch ----------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while not cancel_requested():  # a cancel redis-py swallowed ends it too
            with contextlib.suppress(TimeoutError):
                await wait_for(self._kick.wait(), timeout=0.1)
            self._kick.clear()
            try:
                await self.dispatch(time.monotonic())
            except Exception:
                log.exception("dispatch failed")

    async def dispatch(self, now: float) -> None:
        if self.leading:
            await self.dispatcher.dispatch(now)

    @property
    def stalled(self) -> SubmitRequest | None:
        return self.dispatcher.stalled

    async def _record(self, entries: list[LedgerEntry]) -> bool:
        """Write-ahead: placements reach the ledger before their assignments leave, so a
        successor knows who runs them.  False: this replica no longer leads (publish nothing)."""
        if self.replica is None:
            return True
        try:
            await self.replica.ledger.record(entries)
        except LeaseLost as e:
            await self.replica.deposed(str(e))
            return False
        return self.leading

    # ---- workers -> scheduler ----------------------------------------------------------------
    async def _on_heartbeat(self, hb: WorkerHeartbeat) -> None:
        now = time.monotonic()
        old = self.registry.restarted(hb)
        if old is not None:  # it died and came back before its heartbeats were missed
            await self._worker_gone(old, "restarted")
        if hb.active is not None:
            await self.recovery.check_held(hb, now)
        if self.registry.heartbeat(hb, now):
            self.affinity.forget(hb.worker_id)  # a new (or restarted) worker starts cold
            log.info("worker %s (%s) joined: %d KV blocks", hb.worker_id, hb.role, hb.total_blocks)
        if self.leading:
            self.takeover.on_heartbeat(hb)
        self._kick.set()

    def stats(self) -> SchedulerStats:
        return scheduler_stats(self.policy, self.registry)

    async def _worker_gone(self, dead: WorkerState, how: str) -> None:
        """A worker process is gone (``how``): its cache with it, its requests to recover."""
        self.affinity.forget(dead.hb.worker_id)
        await self.recovery.worker_died(dead, how)
        self._kick.set()

    async def _liveness_loop(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(min(0.25, self.s.heartbeat_timeout_s / 4))
            try:
                now = time.monotonic()
                for dead in self.registry.expire(now):
                    await self._worker_gone(dead, "stopped responding")
                await self.gateways.check(now)
                await self.recovery.fail_waiting(now)
                self._expire_queued(now)
                if self.leading and await self.preemption.check(now) is not None:
                    self._kick.set()
                self.recovery.forget_cancelled(now)
                for wid, cancel in self.takeover.expire(now):
                    await self.outbox.publish(Subjects.worker(wid), cancel)
                if self._counters_dirty and self.leading:
                    await self._save_counters()
                if self.replica is not None and self.leading:
                    live = set(self.inflight) | set(self.takeover.pending)
                    live |= {j.submit.request_id for j in self.retry} | set(self.parked)
                    await self.replica.ledger.sync(live)
            except Exception:
                log.exception("liveness check failed")

    def _expire_queued(self, now: float) -> None:
        """Fail requests queued longer than ``--max-queue-wait`` (``queue_timeout.py``)."""
        if not self.leading:
            return
        for sub, waited in expire_queued(self.policy, self.submits, self.s.max_queue_wait_s, now):
            self.metrics.queue_timed_out(sub.tenant)
            error = RequestError(sub.request_id, 503, overloaded_message(waited))
            self.outbox.deliver(sub.gateway_id, error)
        for job, waited in self.preemption.expire(self.s.max_queue_wait_s, now):
            self.metrics.queue_timed_out(job.submit.tenant)
            message = overloaded_message(waited, preempted=True)
            self.outbox.deliver(
                job.submit.gateway_id, RequestError(job.submit.request_id, 503, message)
            )
            self._counters_changed()

    async def _stats_loop(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(1.0)
            if not self.leading:
                continue
            try:
                await self.outbox.publish(Subjects.STATS, self.stats())
            except Exception as e:  # NATS reconnecting
                log.debug("stats not published: %s", e)

    # ---- counters in Redis (survive a scheduler restart: counters.py) -----------------------
    async def _save_counters(self) -> None:
        if self.replica is None:
            return
        try:
            if await self.replica.counters.save(self.policy):
                self._counters_dirty = False
        except LeaseLost as e:
            await self.replica.deposed(str(e))

    def _counters_changed(self) -> None:
        self._counters_dirty = True
