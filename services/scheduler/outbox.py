"""``Outbox``: what the scheduler sends, and how sure it must be that it arrives.

* plain publishes (cancels, prefetches, stats): a lost one is repaired elsewhere;
* a request's error to its gateway, its last message: acknowledged (``loraplex.terminal``);
* a request's assignment to its worker: acknowledged where the worker's heartbeats say it answers
  (``loraplex.assignments``), sent again while the request is still placed there, so a NATS
  node's death costs about a second instead of the heartbeat check's ``--lost-request-grace``
  twice.
"""

from __future__ import annotations

from collections.abc import Callable

from loraplex.acked import AckedSender
from loraplex.bus import Bus
from loraplex.protocol import Message, PrefillAssign, RequestError, Subjects


class Outbox:
    """Owns the scheduler's two acknowledged senders (``terminal``, ``assignments``), made with
    the bus in ``connect``; the metrics read their counters."""

    def __init__(self) -> None:
        self.bus: Bus | None = None
        self.terminal: AckedSender | None = None
        self.assignments: AckedSender | None = None

    def connect(self, bus: Bus) -> None:
        self.bus = bus
        self.terminal = AckedSender(bus)
        self.assignments = AckedSender(bus)

    async def publish(self, subject: str, msg: Message) -> None:
        assert self.bus is not None
        await self.bus.publish(subject, msg)

    def deliver(self, gateway_id: str, msg: RequestError) -> None:
        """A request's last message to its gateway, sent until acknowledged (in the background)."""
        assert self.terminal is not None
        self.terminal.send(Subjects.stream(gateway_id), msg)

    def assign(self, worker_id: str, msg: PrefillAssign, wanted: Callable[[], bool]) -> None:
        """An assignment to a worker that acknowledges them, sent until it answers or no longer
        ``wanted()`` (the request was recovered, cancelled or finished)."""
        assert self.assignments is not None
        label = f"assignment of {msg.request.request_id}"
        self.assignments.send(Subjects.worker(worker_id), msg, label, wanted)

    async def close(self, wait_s: float) -> None:
        """Errors still on their way to gateways get ``wait_s``; assignments none (a successor
        takes over what this scheduler placed)."""
        if self.assignments is not None:
            await self.assignments.close()
        if self.terminal is not None:
            await self.terminal.close(wait_s=wait_s)
