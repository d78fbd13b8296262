"""A request's last messages, delivered at least once.

Core NATS delivers at most once: a message crossing a cluster node that dies is lost.  A lost
middle delta is repaired by the last one (``TokenDelta.full_text``), but a lost *last* message (the
final delta, or a ``RequestError``) would leave the client waiting until its own timeout.  So the
last message goes as a request on ``Subjects.stream(gateway)``, which the gateway answers with
``StreamAck``, and is sent again until it is answered (``serve_stream`` is the gateway's side).  A
copy that arrives twice is harmless: the gateway has closed the request and drops it.

The same holds for a worker's last report to the scheduler (``RequestProgress`` ``finished`` or
``error`` on ``Subjects.USAGE``, answered by the leader only): lost, the scheduler would find the
request gone from the worker and run it again.  A retryable ``failed`` report is not sent this
way: a late copy would fail the request's next placement (the heartbeat check recovers a lost one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loraplex import prom
from loraplex.bus import NoRespondersError, TypedBus
from loraplex.codec import ProtocolError
from loraplex.protocol import RequestError, RequestProgress, StreamAck, Subjects, TokenDelta

log = logging.getLogger(__name__)

ATTEMPT_S = 1.0  # one try: a gateway answers in milliseconds
DELIVER_S = 15.0  # then give up: the gateway is gone (its clients with it)
NO_RESPONDERS_GAP_S = 0.2  # a gateway reconnecting to another node resubscribes within this

Terminal = TokenDelta | RequestError | RequestProgress
TERMINAL_EVENTS = frozenset({"finished", "error"})  # the RequestProgress events sent this way


class TerminalSender:
    """Sends last messages in the background (the caller never waits for the answer)."""

    def __init__(
        self, bus: TypedBus, attempt_s: float = ATTEMPT_S, deliver_s: float = DELIVER_S
    ) -> None:
        self._bus = bus
        self._attempt_s = attempt_s
        self._deliver_s = deliver_s
        self._tasks: set[asyncio.Task[bool]] = set()
        self._closing = False
        self.retried = 0  # sends after the first (a lost message or a lost ack)
        self.undelivered = 0  # given up on

    def __len__(self) -> int:
        return len(self._tasks)

    def send(self, subject: str, msg: Terminal) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(subject, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, subject: str, msg: Terminal) -> bool:
        """Until ``msg`` is acknowledged (True) or ``deliver_s`` passed (False)."""
        deadline = time.monotonic() + self._deliver_s
        tries = 0
        while (left := deadline - time.monotonic()) > 0:
            tries += 1
            self.retried += tries > 1
            try:
                await self._bus.request(subject, msg, StreamAck, min(self._attempt_s, left))
                return True
            except ProtocolError:
                return True  # something answered: it arrived
            except NoRespondersError:
                if self._closing:
                    break  # nobody listens, and this service is going: do not hold it up
                await asyncio.sleep(min(NO_RESPONDERS_GAP_S, max(0.0, left)))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a timeout, or the connection reconnecting: try again
                log.debug("last message of %s not acknowledged yet: %r", msg.request_id, e)
        self.undelivered += 1
        log.warning("gave up delivering the last message of %s on %s after %d tries",
                    msg.request_id, subject, tries)  # fmt: skip
        return False

    async def close(self, wait_s: float = 0.0) -> None:
        """Give the messages on their way ``wait_s`` to be acknowledged, then stop retrying
        (the service is shutting down)."""
        self._closing = True
        tasks = list(self._tasks)
        if tasks and wait_s > 0:
            await asyncio.wait(tasks, timeout=wait_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sender_counters(
    prefix: str, sender: TerminalSender | None, key: tuple[str, ...], labels: list[str]
) -> list[prom.Family]:
    """A service's ``<prefix>_last_messages_{resent,undelivered}_total`` (0 before it has a
    sender): how often NATS lost a last message or its answer, and how many were given up on."""
    resent, undelivered = (sender.retried, sender.undelivered) if sender is not None else (0, 0)
    return [
        prom.counter(
            f"{prefix}_last_messages_resent",
            "a request's last messages sent again (the copy or its answer was lost or late)",
            {key: float(resent)},
            labels,
        ),
        prom.counter(
            f"{prefix}_last_messages_undelivered",
            "a request's last messages given up on (no answer within 15 s)",
            {key: float(undelivered)},
            labels,
        ),
    ]


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
