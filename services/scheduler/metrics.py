"""The scheduler's Prometheus series, served on its own listener (``http_status.py``).

Exported once, here, not relayed through the gateways: queue depth per tenant and per pool, the
fairness counters, queue time, SUBMIT answers, and the pools' workers and committed requests.

**Queue depth per pool** is the autoscaling signal (HPA / KEDA): the requests waiting in the
scheduler while the pool has no room for the request at the head of the queue (or no worker at
all).  When the head cannot be placed because the decode pool is full, every waiting request
counts for ``pool="decode"``; a pool with room counts 0.  A request needs a prefill and a decode
worker, or one colocated (``both``) worker, so a stalled queue always counts for ``both`` and for
the disaggregated pool(s) that lack room.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from loraplex import prom
from loraplex.acked import sender_counters
from loraplex.kvcache.block_allocator import blocks_for
from loraplex.protocol import SchedulerStats, SubmitReply, SubmitRequest
from loraplex.scheduler.gateways import GatewayWatch
from loraplex.scheduler.outbox import Outbox
from loraplex.scheduler.policies.base import FairnessPolicy, QueuedRequest
from loraplex.scheduler.preemption import Preemption
from loraplex.scheduler.worker_state import WorkerState
from loraplex.scheduler.workers import WorkerRegistry
from loraplex.terminal import LAST_MESSAGES


class SchedulerView(Protocol):
    """What the metrics read of the scheduler service (so this module need not import it)."""

    policy: FairnessPolicy
    registry: WorkerRegistry
    submits: Sized  # queued requests
    retry: Sized  # admitted requests to re-place
    inflight: Sized  # placed and not finished
    parked: Sized  # preempted, waiting to be placed again
    preemption: Preemption  # requests preempted, per tenant
    stalled: SubmitRequest | None  # the head of the queue, while no worker has room for it
    outbox: Outbox  # its acknowledged senders: errors to gateways, assignments
    gateways: GatewayWatch  # gateways heard, and the requests of gone ones cancelled
    leading: bool  # this replica holds the lease (a scheduler without Redis always leads)


POOLS = ("prefill", "decode", "both")
_QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _serving(registry: WorkerRegistry, pool: str) -> list[WorkerState]:
    return [w for w in registry.workers.values() if w.hb.role == pool and not w.hb.draining]


def pool_counts(registry: WorkerRegistry) -> dict[str, int]:
    """Live, non-draining workers per role (``SchedulerStats.pools``, the gateways' /ready)."""
    return {pool: len(_serving(registry, pool)) for pool in POOLS}


def blocked_pools(registry: WorkerRegistry, sub: SubmitRequest) -> set[str]:
    """The pools where no placeable worker has room for ``sub`` (as ``WorkerRegistry.place``
    sees room: a batch slot and the committed KV blocks of its tokens)."""
    prompt = len(sub.prompt_token_ids)
    need = {"prefill": prompt, "decode": prompt + sub.sampling.max_tokens}
    need["both"] = need["decode"]
    return {
        pool
        for pool in POOLS
        if not any(
            not w.suspect and w.has_room(blocks_for(need[pool], w.hb.block_size))
            for w in _serving(registry, pool)
        )
    }


class SchedulerMetrics:
    def __init__(self, service: SchedulerView) -> None:
        self.service = service
        r = self.registry = CollectorRegistry()
        self._by_code: dict[int, Counter] = {}  # the labelled children, per SUBMIT answer code
        self._by_tenant: dict[str, Histogram] = {}  # and per tenant (queue time)
        self.queue_time = Histogram(
            "loraplex_scheduler_queue_time_seconds",
            "submit to first placement, per tenant",
            ["tenant"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.submits = Counter(
            "loraplex_scheduler_submits",
            "SUBMIT answers by status (200 accepted; 400, 429, 503 refused)",
            ["code"],
            registry=r,
        )
        for code in ("200", "400", "429", "503"):
            self.submits.labels(code)  # present (at 0) before the first request
        self.queue_timeouts: dict[str, int] = {}  # tenant -> requests shed (queue_timeout.py)
        prom.register(r, self._collect)

    def submitted(self, reply: SubmitReply) -> None:
        code = 200 if reply.accepted else reply.code
        child = self._by_code.get(code)
        if child is None:  # ``labels`` takes a lock and builds a key each call: once per code
            child = self._by_code[code] = self.submits.labels(str(code))
        child.inc()

    def queue_timed_out(self, tenant: str) -> None:
        self.queue_timeouts[tenant] = self.queue_timeouts.get(tenant, 0) + 1

    def admitted(self, q: QueuedRequest, now: float) -> None:
        child = self._by_tenant.get(q.tenant)
        if child is None:
            child = self._by_tenant[q.tenant] = self.queue_time.labels(q.tenant)
        child.observe(max(0.0, now - q.arrival))

    def _collect(self) -> Iterable[prom.Family]:
        s = self.service
        policy, registry = s.policy, s.registry
        counters = policy.counters()
        tenants = {(t,): float(policy.queue_len(t)) for t in counters}
        waiting = len(s.submits) + len(s.retry) + len(s.parked)
        blocked = blocked_pools(registry, s.stalled) if s.stalled is not None and waiting else set()
        by_pool = {pool: _serving(registry, pool) for pool in POOLS}
        yield prom.gauge(
            "loraplex_scheduler_queue_depth",
            "requests waiting while this pool has no room for the head of the queue (autoscaling)",
            {(p,): float(waiting if p in blocked else 0) for p in POOLS},
            ["pool"],
        )
        yield prom.gauge(
            "loraplex_scheduler_leader",
            "1 while this replica leads (holds the lease in Redis), 0 while it stands by",
            {(): 1.0 if s.leading else 0.0},
            [],
        )
        yield prom.gauge(
            "loraplex_scheduler_queued_requests",
            "requests waiting in the scheduler (queued, admitted ones to re-place, preempted ones)",
            {(): float(waiting)},
            [],
        )
        yield prom.gauge(
            "loraplex_scheduler_inflight_requests",
            "requests placed on workers and not finished",
            {(): float(len(s.inflight))},
            [],
        )
        yield prom.gauge(
            "loraplex_scheduler_tenant_queue_depth",
            "requests waiting per tenant",
            tenants,
            ["tenant"],
        )
        yield prom.gauge(
            "loraplex_scheduler_tenant_service",
            "fairness counter per tenant (weighted tokens served)",
            {(t,): float(c) for t, c in counters.items()},
            ["tenant"],
        )
        yield prom.gauge(
            "loraplex_scheduler_pool_workers",
            "live, non-draining workers per pool",
            {(p,): float(len(ws)) for p, ws in by_pool.items()},
            ["pool"],
        )
        yield prom.gauge(
            "loraplex_scheduler_pool_requests",
            "requests committed to the pool's workers",
            {(p,): float(sum(len(w.requests) for w in ws)) for p, ws in by_pool.items()},
            ["pool"],
        )
        yield prom.gauge(
            "loraplex_scheduler_pool_request_slots",
            "batch slots of the pool's workers (sum of max_num_seqs)",
            {(p,): float(sum(w.hb.max_num_seqs for w in ws)) for p, ws in by_pool.items()},
            ["pool"],
        )
        yield prom.counter(
            "loraplex_scheduler_orphaned_requests_cancelled",
            "requests cancelled because their gateway stopped heart-beating (--gateway-timeout)",
            {(): float(s.gateways.cancelled)},
            [],
        )
        shed = {(t,): 0.0 for t in counters}  # every tenant heard of, at 0 until one is shed
        shed.update({(t,): float(n) for t, n in self.queue_timeouts.items()})
        yield prom.counter(
            "loraplex_scheduler_queue_timeouts",
            "requests failed (503 overloaded) after waiting --max-queue-wait queued, per tenant",
            shed,
            ["tenant"],
        )
        preempted = {(t,): 0.0 for t in counters}
        preempted.update({(t,): float(n) for t, n in s.preemption.preempted.items()})
        yield prom.counter(
            "loraplex_scheduler_preemptions",
            "decoding requests paused for a tenant below its share of the batch, per tenant "
            "(--preempt-after; each resumes from its tokens so far)",
            preempted,
            ["tenant"],
        )
        out = s.outbox
        yield from sender_counters(
            "loraplex_scheduler", "last_messages", LAST_MESSAGES, out.terminal, (), []
        )
        yield from sender_counters(
            "loraplex_scheduler", "assignments", "assignments to workers", out.assignments, (), []
        )


def scheduler_stats(policy: FairnessPolicy, registry: WorkerRegistry) -> SchedulerStats:
    """The STATS message: queues and counters per tenant, per-worker load, pool counts."""
    queued = {t: policy.queue_len(t) for t in policy.counters()}
    workers = {
        wid: {
            "kv_blocks_used": w.hb.total_blocks - w.hb.free_blocks,
            "kv_blocks_total": w.hb.total_blocks,
            "kv_blocks_committed": w.committed_blocks,
            "running": w.hb.running,
            "waiting": w.hb.waiting,
            "adapter_slots_used": w.hb.adapter_slots_used,
            "adapter_slots_total": w.hb.adapter_slots_total,
            "adapter_slots_pinned": w.hb.adapter_slots_pinned,
            "prefix_cache_hit_tokens": w.hb.prefix_cache_hit_tokens,
            "prefix_cache_query_tokens": w.hb.prefix_cache_query_tokens,
        }
        for wid, w in registry.workers.items()
    }
    return SchedulerStats(queued, policy.counters(), workers, pool_counts(registry))
