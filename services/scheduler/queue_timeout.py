"""Requests that waited too long in the queue fail early, as "overloaded", so clients learn early.

Under overload the queue grows faster than workers drain it; without a bound a request would wait
until the gateway's request timeout (120 s) and end with a 504, its client none the wiser for two
minutes.  ``--max-queue-wait`` (default 60 s) ends it with a 503 instead, as a Triton queue
policy with a timeout and ``timeout_action: REJECT`` does.  Under fair sharing the tenants that send
the most wait the longest, so they are the ones shed; a light tenant's requests keep running.

A failover does not restart the clock: the gateway resubmits a request with the seconds it has
waited (``SubmitRequest.waited_s``) and the new leader queues it with that arrival.

Pure bookkeeping: it reads the policy's queued requests and takes expired ones out of the policy
and the queued table; the caller tells the gateways.
"""

from __future__ import annotations

from loraplex.protocol import SubmitRequest
from loraplex.scheduler.policies.base import FairnessPolicy


def expire_queued(
    policy: FairnessPolicy,
    queued: dict[str, SubmitRequest],
    max_wait_s: float,
    now: float,
) -> list[tuple[SubmitRequest, float]]:
    """Take out every request queued for ``max_wait_s`` or longer (``<= 0``: none); returns
    (request, seconds it waited), in queue order.  A scan of the whole queue (at most
    ``--max-queue`` entries): a resubmission after a failover is queued with its first arrival,
    behind younger requests."""
    expired: list[tuple[SubmitRequest, float]] = []
    if max_wait_s <= 0:
        return expired
    for q in policy.queued():
        if now - q.arrival < max_wait_s:
            continue
        policy.cancel(q.request_id)
        sub = queued.pop(q.request_id, None)
        if sub is not None:
            expired.append((sub, now - q.arrival))
    return expired


def overloaded_message(waited_s: float, preempted: bool = False) -> str:
    if preempted:  # paused for tenants below their share (preemption.py), never resumed
        return (
            f"the server is overloaded: the request was paused for other tenants and waited "
            f"{waited_s:.0f}s to resume; try again later"
        )
    return (
        f"the server is overloaded: the request waited {waited_s:.0f}s in the queue without "
        "starting; try again later"
    )
