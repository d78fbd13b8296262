"""``MemoryBus``: the in-process twin of ``loraplex.bus.Bus``, for tests that need no server.

Same interface and the same NATS semantics that loraplex relies on: subjects with ``*`` (one
token) and ``>`` (the rest) wildcards, queue groups (one member of a group gets each message),
per-subscription delivery in publish order, request/reply with no-responders and timeouts.
Buses joined to one ``MemoryHub`` see each other's messages. ``tests/test_bus_contract.py`` runs
one contract against both, so the twin cannot drift from the real transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from dataclasses import dataclass, field
from typing import TypeVar

from loraplex.bus import (
    NO_RESPONDERS,
    BusError,
    BusTimeoutError,
    NoRespondersError,
    RawHandler,
    TypedBus,
)
from loraplex.protocol import Message
from loraplex.timeouts import wait_for

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

DEFAULT_MAX_PAYLOAD = 1 << 20  # nats-server's default


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: ``*`` is exactly one token, a trailing ``>`` is one or more tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return i == len(pat) - 1 and len(sub) > i
        if i >= len(sub) or (p != "*" and p != sub[i]):
            return False
    return len(pat) == len(sub)


@dataclass
class MemoryMsg:
    """One delivered message (a ``RawMessage``); ``data`` is the publisher's object, uncopied."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None
    hub: MemoryHub = field(repr=False)

    async def respond(self, data: bytes) -> None:
        if not self.reply:
            raise BusError("message has no reply subject")
        self.hub.deliver(self.reply, data, None, "")


class MemorySubscription:
    """One subscription: its queue of messages and the task that hands them to ``handler``."""

    def __init__(self, hub: MemoryHub, subject: str, queue: str, handler: RawHandler) -> None:
        self.hub = hub
        self.subject = subject
        self.queue = queue
        self._handler = handler
        self._inbox: asyncio.Queue[MemoryMsg] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    def put(self, msg: MemoryMsg) -> None:
        self._inbox.put_nowait(msg)

    async def _run(self) -> None:
        while True:
            msg = await self._inbox.get()
            try:
                await self._handler(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler for %s failed", msg.subject)
            finally:
                self._inbox.task_done()

    async def drain(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):  # a handler stuck past ``timeout``
            await wait_for(self._inbox.join(), timeout)
        await self.unsubscribe()

    async def unsubscribe(self) -> None:
        self.hub.subs.discard(self)
        self._task.cancel()


class MemoryHub:
    """The "server": owns every subscription of the buses connected to it and routes messages."""

    hubs: dict[str, MemoryHub] = {}  # by url, for ``MemoryBus.connect``

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.subs: set[MemorySubscription] = set()
        self.replies: dict[str, asyncio.Future[bytes]] = {}
        self._turn = itertools.count()

    def connect(self, name: str) -> MemoryBus:
        return MemoryBus(self, name)

    def matching(self, subject: str) -> list[MemorySubscription]:
        return [s for s in self.subs if subject_matches(s.subject, subject)]

    def deliver(
        self, subject: str, data: bytes, headers: dict[str, str] | None, reply: str
    ) -> None:
        waiter = self.replies.pop(subject, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(data)
            return
        groups: dict[str, list[MemorySubscription]] = {}
        for s in self.matching(subject):
            if not s.queue:
                s.put(MemoryMsg(subject, reply, data, headers, self))
            else:
                groups.setdefault(s.queue, []).append(s)
        for members in groups.values():
            members.sort(key=id)
            pick = members[next(self._turn) % len(members)]
            pick.put(MemoryMsg(subject, reply, data, headers, self))


class MemoryBus(TypedBus):
    """One client of a ``MemoryHub``: the twin of ``Bus`` (same methods, same errors)."""

    def __init__(self, hub: MemoryHub, name: str) -> None:
        super().__init__(name)
        self.hub = hub
        self._subs: list[MemorySubscription] = []
        self._closed = False

    @classmethod
    async def connect(cls, url: str, name: str, connect_timeout: float = 5.0) -> MemoryBus:
        """Join the hub named by ``url`` (created on first use)."""
        return MemoryHub.hubs.setdefault(url, MemoryHub()).connect(name)

    @property
    def max_payload(self) -> int:
        return self.hub.max_payload

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"{self.name}: connection closed")

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        self._check_open()
        if reply and not self.hub.matching(subject):  # as nats-server answers it
            self.hub.deliver(reply, b"", dict(NO_RESPONDERS), "")
            return
        self.hub.deliver(subject, data, headers, reply)

    async def request_raw(self, subject: str, data: bytes, timeout: float) -> bytes:
        """Send ``data`` and return the reply's bytes; bus failures raise ``BusError``s."""
        self._check_open()
        if not self.hub.matching(subject):
            raise NoRespondersError(f"no responders on {subject}")
        inbox = f"_INBOX.{uuid.uuid4().hex}"
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.hub.replies[inbox] = waiter
        self.hub.deliver(subject, data, None, inbox)
        try:
            return await wait_for(waiter, timeout)
        except TimeoutError:
            raise BusTimeoutError(f"no reply on {subject} within {timeout:g}s") from None
        finally:
            self.hub.replies.pop(inbox, None)

    async def subscribe_raw(
        self,
        subject: str,
        handler: RawHandler,
        queue: str = "",
        pending_bytes_limit: int | None = None,
    ) -> object:
        """Call ``handler`` with each message undecoded (``pending_bytes_limit`` is unbounded)."""
        self._check_open()
        sub = MemorySubscription(self.hub, subject, queue, handler)
        self.hub.subs.add(sub)
        self._subs.append(sub)
        return sub

    async def flush(self) -> None:
        """Subscriptions register at once; this only lets queued deliveries start."""
        self._check_open()
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Drain: deliver what is in flight, then close."""
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:
            await sub.drain()
        self._subs.clear()
