"""A request's last messages, delivered at least once (``acked.py`` sends them).

A lost middle delta is repaired by the last one (``TokenDelta.full_text``), but a lost *last*
message (the final delta, or a ``RequestError``) would leave the client waiting until its own
timeout.  So the last message goes as a request on ``Subjects.stream(gateway)``, which the gateway
answers with ``StreamAck`` (``serve_stream``).  A copy that arrives twice is harmless: the gateway
has closed the request and drops it.

The same holds for a worker's last report to the scheduler (``RequestProgress`` ``finished`` or
``error`` on ``Subjects.USAGE``, answered by the leader only, ``serve_progress``): lost, the
scheduler would find the request gone from the worker and run it again.  A retryable ``failed``
report is not sent this way: a late copy would fail the request's next placement (the heartbeat
check recovers a lost one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loraplex.bus import TypedBus
from loraplex.protocol import RequestError, RequestProgress, StreamAck, Subjects, TokenDelta

Terminal = TokenDelta | RequestError | RequestProgress
LAST_MESSAGES = "a request's last messages"  # in metrics' help
TERMINAL_EVENTS = frozenset({"finished", "error"})  # the RequestProgress events sent this way


async def serve_stream(
    bus: TypedBus,
    gateway_id: str,
    handler: Callable[[Any], Awaitable[None]],
    expect: type[Terminal] | tuple[type[Terminal], ...] = (TokenDelta, RequestError),
) -> object:
    """Subscribe a gateway (or a test's stand-in) to its stream subject: each message goes to
    ``handler``; one sent as a request (a request's last) is answered with ``StreamAck``."""

    async def on_message(msg: Terminal) -> StreamAck:
        await handler(msg)
        return StreamAck(msg.request_id)

    return await bus.serve(Subjects.stream(gateway_id), on_message, expect)


async def serve_progress(
    bus: TypedBus,
    handler: Callable[[RequestProgress], Awaitable[None]],
    acknowledge: Callable[[], bool] = lambda: True,
) -> object:
    """Subscribe to workers' progress (``Subjects.USAGE``): each report goes to ``handler``; a last
    one sent as a request is answered with ``StreamAck`` while ``acknowledge()`` (the scheduler:
    while it leads, so a standby never swallows a report its leader missed)."""

    async def on_progress(p: RequestProgress) -> StreamAck | None:
        await handler(p)
        return StreamAck(p.request_id) if acknowledge() else None

    return await bus.serve(Subjects.USAGE, on_progress, RequestProgress)
