"""A request's assignment to its worker, delivered at least once.

A ``PrefillAssign`` lost with a NATS node would leave its request waiting until the scheduler
noticed that the worker does not hold it (heartbeats, ``--lost-request-grace`` twice: seconds).
So a worker that says so in its heartbeats (``WorkerHeartbeat.acks_assignments``) answers each
assignment with ``StreamAck`` on receipt (``serve_control``), and the scheduler sends it again
(``acked.AckedSender``) until it is answered, for as long as the request is still placed there.
The worker takes a repeat of an assignment it already took as delivered, and does not run it
twice (``services/worker/active.py``).  Cancels and prefetches stay plain publishes: a lost cancel
is sent again when the worker reports tokens for it, a lost prefetch costs one page-in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loraplex.bus import TypedBus
from loraplex.protocol import CancelRequest, PrefetchAdapter, PrefillAssign, StreamAck, Subjects

ControlMessage = PrefillAssign | CancelRequest | PrefetchAdapter


async def serve_control(
    bus: TypedBus,
    worker_id: str,
    handler: Callable[[ControlMessage], Awaitable[None]],
    expect: type[ControlMessage] | tuple[type[ControlMessage], ...] = (
        PrefillAssign,
        CancelRequest,
        PrefetchAdapter,
    ),
) -> object:
    """Subscribe a worker (or a test's stand-in) to its control subject: each message goes to
    ``handler``; an assignment sent as a request is answered with ``StreamAck`` once handled."""

    async def on_control(msg: ControlMessage) -> StreamAck | None:
        await handler(msg)
        if isinstance(msg, PrefillAssign):
            return StreamAck(msg.request.request_id)
        return None

    return await bus.serve(Subjects.worker(worker_id), on_control, expect)
