"""Scheduler settings and flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from loraplex import env
from loraplex.cli_flags import Flag, add_flags, flag, status_listener_flags
from loraplex.cli_help import DefaultsHelpFormatter
from loraplex.scheduler.policies.registry import POLICIES


@dataclass(frozen=True)
class SchedulerSettings:
    nats_url: str
    redis_url: str | None = None
    fairness: str = "vtc"
    tenants_file: str | None = None
    max_queue_per_tenant: int = 256
    max_queue: int = 4096
    heartbeat_timeout_s: float = 3.0
    max_attempts: int = 3
    w_p: float = 1.0
    w_q: float = 2.0
    rpm_limit: int = 60
    rpm_window_s: float = 60.0
    redis_prefix: str = "loraplex"
    prefix_routing: bool = True
    lost_request_grace_s: float = 2.0
    # A gateway heard and then silent this long is gone: its requests are cancelled (0: never).
    gateway_timeout_s: float = 10.0
    prefix_balance: float = 0.25
    # Waiting requests fail (503) once no worker set could serve them for this long, instead of
    # waiting for the gateway's request timeout while a dead worker is being restarted.
    unavailable_timeout_s: float = 5.0
    # A request still queued after this long fails (503, overloaded) instead of waiting for the
    # gateway's request timeout (504): the client learns early, and may retry elsewhere (0: never).
    max_queue_wait_s: float = 60.0
    # The head of the queue waited this long for room: a tenant over its share of the batch gives
    # a slot back (preemption.py; 0: never).
    preempt_after_s: float = 2.0
    # /health, /ready, /metrics (http_status.py); the series name tenants: loopback by default.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: none (the flag's default is 8003)
    # Replicas (with Redis): the leader's lease lives this long unrenewed, so a killed leader is
    # replaced within it (plus a standby's poll); a resubmitted request may claim its ledger
    # entry for ``takeover_claim_s`` after a takeover.  "" = hostname-pid-random.
    scheduler_id: str = ""
    leader_lease_s: float = 1.5
    takeover_claim_s: float = 2.0

    def policy_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"w_p": self.w_p, "w_q": self.w_q}
        if self.fairness == "rpm":
            opts["limit"] = self.rpm_limit
            opts["window_s"] = self.rpm_window_s
        return opts


def flags() -> tuple[Flag, ...]:
    """Every scheduler flag (``loraplex up`` reuses some); defaults read the environment now."""
    return (
        flag("--nats-url", default=env.NATS_URL.get()),
        flag(
            "--redis-url",
            default=env.REDIS_URL.get() or None,
            help=f"keeps fairness counters across restarts [{env.REDIS_URL.name}]",
        ),
        flag(
            "--fairness",
            choices=list(POLICIES),
            default="vtc",
            help="the policy that picks the next tenant's request (policies/registry.py)",
        ),
        flag(
            "--tenants",
            default=None,
            help="tenants file (weights are read from it; default: one open tenant)",
        ),
        flag(
            "--max-queue-per-tenant",
            type=int,
            default=256,
            help="429 above this many queued per tenant",
        ),
        flag("--max-queue", type=int, default=4096, help="429 above this many queued in total"),
        flag(
            "--heartbeat-timeout", type=float, default=3.0, help="seconds without heartbeat = dead"
        ),
        flag(
            "--max-attempts",
            type=int,
            default=3,
            help="placements of a request (re-dispatches and migrations after its worker died) "
            "before it fails with a 503 naming the cause",
        ),
        flag("--w-p", type=float, default=1.0, help="VTC weight of an input token"),
        flag("--w-q", type=float, default=2.0, help="VTC weight of an output token"),
        flag(
            "--rpm-limit",
            type=int,
            default=60,
            help="requests per window per tenant (--fairness rpm)",
        ),
        flag(
            "--rpm-window",
            type=float,
            default=60.0,
            help="seconds of the RPM window (--fairness rpm)",
        ),
        flag(
            "--redis-prefix",
            default=env.REDIS_PREFIX.get(),
            help="prefix of the scheduler's Redis keys",
        ),
        flag(
            "--lost-request-grace",
            type=float,
            default=2.0,
            help="seconds a worker may not list a request it was given before it is re-dispatched",
        ),
        flag(
            "--gateway-timeout",
            type=float,
            default=10.0,
            help="seconds without a gateway's heartbeat before the requests it owns are "
            "cancelled (it died with its clients' connections); 0 = never",
        ),
        flag(
            "--prefix-routing",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="place a prompt's prefill on the worker that last prefilled its prefix",
        ),
        flag(
            "--prefix-balance",
            type=float,
            default=0.25,
            help="how much busier (share of its batch) a prefix-matching worker may be",
        ),
        flag(
            "--unavailable-timeout",
            type=float,
            default=5.0,
            help="seconds without a live worker set (workers restarting) during which requests "
            "wait; then they fail with 503, and new ones are refused at once",
        ),
        flag(
            "--max-queue-wait",
            type=float,
            default=60.0,
            help="seconds a request may wait in the queue (an overloaded server) before it fails "
            "with 503 (overloaded); under fair sharing, the tenants sending most wait longest; "
            "0 = until the gateway's request timeout",
        ),
        flag(
            "--preempt-after",
            type=float,
            default=2.0,
            help="seconds the head of the queue may wait for room before the tenant furthest "
            "over its share of the batch gives a slot back: its newest decoding request is "
            "paused and resumed later from its tokens (vtc and lcf); 0 = never",
        ),
        *status_listener_flags(
            env.SCHEDULER_METRICS_HOST,
            env.SCHEDULER_METRICS_PORT,
            host_note=" (its series name tenants)",
        ),
        flag(
            "--leader-lease",
            type=float,
            default=1.5,
            help="seconds a leader's lease in Redis lives unrenewed (replicas: a standby takes over "
            "a killed leader within it)",
        ),
        flag(
            "--scheduler-id", default="", help="this replica's name (default: hostname-pid-random)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loraplex.scheduler",
        description="loraplex scheduler: the only queue.",
        formatter_class=DefaultsHelpFormatter,
    )
    return add_flags(p, flags())


def settings_from_args(a: argparse.Namespace) -> SchedulerSettings:
    return SchedulerSettings(
        nats_url=a.nats_url,
        redis_url=a.redis_url,
        fairness=a.fairness,
        tenants_file=a.tenants,
        max_queue_per_tenant=a.max_queue_per_tenant,
        max_queue=a.max_queue,
        heartbeat_timeout_s=a.heartbeat_timeout,
        max_attempts=a.max_attempts,
        w_p=a.w_p,
        w_q=a.w_q,
        rpm_limit=a.rpm_limit,
        rpm_window_s=a.rpm_window,
        redis_prefix=a.redis_prefix,
        prefix_routing=a.prefix_routing,
        lost_request_grace_s=a.lost_request_grace,
        gateway_timeout_s=a.gateway_timeout,
        prefix_balance=a.prefix_balance,
        unavailable_timeout_s=a.unavailable_timeout,
        max_queue_wait_s=a.max_queue_wait,
        preempt_after_s=a.preempt_after,
        metrics_host=a.metrics_host,
        metrics_port=a.metrics_port,
        scheduler_id=a.scheduler_id,
        leader_lease_s=a.leader_lease,
    )
