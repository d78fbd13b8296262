"""Whether a SUBMIT may join the queue at all: the scheduler's answers other than "accepted".

Pure: it reads the worker registry (can any worker set serve it, could one ever hold it) and the
policy's queue lengths (the per-tenant and global limits), and writes nothing.
"""

from __future__ import annotations

from loraplex.protocol import SubmitReply, SubmitRequest
from loraplex.scheduler.policies.base import FairnessPolicy
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry


def refusal(
    sub: SubmitRequest,
    registry: WorkerRegistry,
    policy: FairnessPolicy,
    settings: SchedulerSettings,
    queued: int,
    listening_s: float,
    outage_s: float = float("inf"),
    tenant_limit: int | None = None,
) -> SubmitReply | None:
    """The refusal for ``sub`` (503: no workers; 400: too big for any; 429: a queue is full),
    or None when it may be queued.  ``queued``: requests in the scheduler's queue now;
    ``listening_s``: how long this scheduler has heard worker heartbeats; ``outage_s``: how long
    no worker set could serve (``Recovery.outage_s``); ``tenant_limit``: the tenant's own queue
    limit (the tenants file's ``max_queue``), else ``--max-queue-per-tenant``."""
    rid, tenant = sub.request_id, sub.tenant
    prompt = len(sub.prompt_token_ids)
    total = prompt + sub.sampling.max_tokens
    if not registry.can_serve():
        if (
            listening_s >= settings.heartbeat_timeout_s
            and outage_s >= settings.unavailable_timeout_s
        ):
            return SubmitReply(rid, False, 503, "no worker is available to serve requests")
        # Just started (a restarted leader, a fresh replica: no heartbeat window has passed, so an
        # empty registry says nothing yet), or the workers went away moments ago (a supervisor is
        # restarting them).  Queued, the request waits for workers until the outage has lasted
        # --unavailable-timeout (recovery.fail_waiting), then fails with a 503, as do those that
        # were queued before the outage; from then on the answer is a 503 at once.
    elif not registry.could_ever_fit(prompt, total):
        return SubmitReply(
            rid, False, 400, f"request needs {total} tokens of KV cache; no worker has that much"
        )
    limit = tenant_limit if tenant_limit is not None else settings.max_queue_per_tenant
    if policy.queue_len(tenant) >= limit:
        return SubmitReply(rid, False, 429, f"tenant {tenant!r} has {limit} requests queued")
    if queued >= settings.max_queue:
        return SubmitReply(rid, False, 429, "the server's queue is full")
    return None
