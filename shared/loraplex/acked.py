"""Messages delivered at least once over core NATS, which delivers at most once.

A message crossing a cluster node that dies is lost.  Where a lost message would leave a request
waiting (a request's last message, a worker's last report, an assignment), it goes as a request
that the receiver answers with ``StreamAck``, and is sent again until it is answered.  The
receivers make a repeat harmless: a gateway drops a copy for a closed request, a worker ignores an
assignment it already took (``services/worker/active.py``).  ``terminal.py`` and
``assignments.py`` hold the answering sides.

Sending happens in background tasks: the caller never waits for the answer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from loraplex import prom
from loraplex.bus import RawMessage, TypedBus, is_no_responders
from loraplex.protocol import Message, encode

log = logging.getLogger(__name__)

ATTEMPT_S = 1.0  # one try: a gateway or worker answers in milliseconds
DELIVER_S = 15.0  # then give up: the receiver is gone
NO_RESPONDERS_GAP_S = 0.2  # a receiver reconnecting to another node resubscribes within this


def _always() -> bool:
    return True


@dataclass(slots=True)
class _Pending:
    subject: str
    data: bytes
    label: str
    wanted: Callable[[], bool]
    give_up: float  # monotonic: no answer by then, and it is given up on
    due: float  # monotonic: when it is (re)sent unless answered
    tries: int = 0
    outcome: asyncio.Future[bool] | None = None  # for ``deliver``
    nobody: bool = False  # the last try found no receiver subscribed


class AckedSender:
    """Sends messages until they are acknowledged.  ``retried`` counts sends after the first (a
    lost message or a lost answer), ``undelivered`` messages given up on.

    Cheap per message, since the scheduler sends every assignment this way: each message is one
    publish whose reply subject names it (``<inbox>.<n>``), one wildcard subscription takes every
    answer, and one task sends, resends and gives up in due order (no task, future or timer per
    message).  The answer's body is not read: that it came is the acknowledgement.
    """

    def __init__(
        self, bus: TypedBus, attempt_s: float | None = None, deliver_s: float | None = None
    ) -> None:
        self._bus = bus
        self._attempt_s = ATTEMPT_S if attempt_s is None else attempt_s
        self._deliver_s = DELIVER_S if deliver_s is None else deliver_s
        self._inbox = f"_INBOX.{uuid.uuid4().hex}"
        self._pending: dict[str, _Pending] = {}  # by the token of its reply subject
        self._due: list[tuple[float, int, str]] = []  # heap of (due, token number, token)
        self._numbers = itertools.count()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._subscribed = False
        self.retried = 0
        self.undelivered = 0

    def __len__(self) -> int:
        return len(self._pending)

    def send(
        self, subject: str, msg: Message, label: str = "", wanted: Callable[[], bool] = _always
    ) -> None:
        """Deliver ``msg`` while ``wanted()`` holds: a sender that stops needing it (the request
        was placed elsewhere) stops resending it.  ``label`` names it in logs (default: its
        type and request id).  Returns at once; the first send happens on the next turn of
        the event loop."""
        self._add(subject, msg, label, wanted, None)

    async def deliver(
        self, subject: str, msg: Message, label: str = "", wanted: Callable[[], bool] = _always
    ) -> bool:
        """``send``, then wait: True once acknowledged, False once no longer ``wanted`` or
        ``deliver_s`` passed."""
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._add(subject, msg, label, wanted, outcome)
        return await outcome

    def _add(
        self,
        subject: str,
        msg: Message,
        label: str,
        wanted: Callable[[], bool],
        outcome: asyncio.Future[bool] | None,
    ) -> None:
        now = time.monotonic()
        label = label or f"{msg.TAG} of {getattr(msg, 'request_id', '?')}"
        n = next(self._numbers)
        token = str(n)
        self._pending[token] = _Pending(
            subject, encode(msg), label, wanted, now + self._deliver_s, now, 0, outcome
        )
        heapq.heappush(self._due, (now, n, token))
        if self._runner is None or self._runner.done():  # first use, or it failed to subscribe
            self._runner = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        if not self._subscribed:
            try:
                await self._bus.subscribe_raw(f"{self._inbox}.*", self._on_answer)
            except Exception as e:  # the connection is closed: the next send tries again
                log.warning("cannot take answers on %s: %r", self._inbox, e)
                return
            self._subscribed = True
        loop = asyncio.get_running_loop()  # its clock is time.monotonic
        timer: asyncio.TimerHandle | None = None
        while True:
            self._wake.clear()  # before the work: a send during it wakes the next turn
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, _, token = heapq.heappop(self._due)
                entry = self._pending.get(token)
                if entry is not None and entry.due == due:
                    await self._try(token, entry, now)
            if self._due:
                at = self._due[0][0]
                # One timer, not one per message: re-armed when it fired or would be late.
                if timer is None or timer.when() <= now or timer.when() > at:
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_at(at, self._wake.set)
            await self._wake.wait()

    async def _try(self, token: str, entry: _Pending, now: float) -> None:
        """Send ``entry`` (again), or drop it: given up on, or no longer wanted."""
        if entry.tries and not self._wanted(entry):
            self._settle(token, entry, False)
            return
        if now >= entry.give_up or (entry.nobody and self._closing):
            self.undelivered += 1
            log.warning("gave up delivering %s on %s after %d tries",
                        entry.label, entry.subject, entry.tries)  # fmt: skip
            self._settle(token, entry, False)
            return
        entry.tries += 1
        entry.nobody = False
        self.retried += entry.tries > 1
        self._schedule(token, entry, now + self._attempt_s)
        try:
            await self._bus.publish_raw(entry.subject, entry.data, reply=f"{self._inbox}.{token}")
        except Exception as e:  # the connection closing or reconnecting: try again when due
            log.debug("%s not sent yet: %r", entry.label, e)

    @staticmethod
    def _wanted(entry: _Pending) -> bool:
        try:
            return entry.wanted()
        except Exception:  # a sender's check must not stop the sending of everything else
            log.exception("checking whether %s is still wanted failed", entry.label)
            return False

    def _schedule(self, token: str, entry: _Pending, due: float) -> None:
        entry.due = min(due, entry.give_up)
        heapq.heappush(self._due, (entry.due, next(self._numbers), token))

    def _settle(self, token: str, entry: _Pending, delivered: bool) -> None:
        del self._pending[token]
        if entry.outcome is not None and not entry.outcome.done():
            entry.outcome.set_result(delivered)

    async def _on_answer(self, raw: RawMessage) -> None:
        token = raw.subject.rsplit(".", 1)[-1]
        entry = self._pending.get(token)
        if entry is None:
            return  # a late answer to a copy already answered
        if not is_no_responders(raw):
            self._settle(token, entry, True)
            return
        # Nobody listens now: a receiver reconnecting to another node resubscribes soon.
        entry.nobody = True
        soon = time.monotonic() + (0.0 if self._closing else NO_RESPONDERS_GAP_S)
        if soon < entry.due:
            self._schedule(token, entry, soon)
            self._wake.set()

    async def close(self, wait_s: float = 0.0) -> None:
        """Give the messages on their way ``wait_s`` to be acknowledged, then stop (the service
        is shutting down); one nobody listens to is given up on at once."""
        self._closing = True
        deadline = time.monotonic() + wait_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        for token, entry in list(self._pending.items()):
            self._settle(token, entry, False)


def sender_counters(
    prefix: str,
    kind: str,
    what: str,
    sender: AckedSender | None,
    key: tuple[str, ...],
    labels: list[str],
) -> list[prom.Family]:
    """``<prefix>_<kind>_{resent,undelivered}_total`` (0 before the service has a sender):
    how often NATS lost one of ``what`` or its answer, and how many were given up on."""
    resent, undelivered = (sender.retried, sender.undelivered) if sender is not None else (0, 0)
    return [
        prom.counter(
            f"{prefix}_{kind}_resent",
            f"{what} sent again (the copy or its answer was lost or late)",
            {key: float(resent)},
            labels,
        ),
        prom.counter(
            f"{prefix}_{kind}_undelivered",
            f"{what} given up on (no answer in time)",
            {key: float(undelivered)},
            labels,
        ),
    ]
