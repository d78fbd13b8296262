"""A thin typed wrapper over nats-py: the one transport every service talks through.

``Bus`` owns one NATS connection. It publishes and subscribes ``loraplex.protocol`` messages,
does typed request/reply (``request``/``serve``), and hands raw payloads to ``subscribe_raw``
handlers (the K/V chunks, which are big and must not be copied). Nothing outside this module
touches the nats-py client; ``loraplex.bus_memory.MemoryBus`` is its in-process twin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from loraplex.protocol import Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
Handler = Callable[[Message], Awaitable[None]]


class BusError(Exception):
    """The message bus failed a request (connection lost, closed, ...)."""


class NoRespondersError(BusError):
    """Nobody subscribes to the subject a request was sent on."""


class BusTimeoutError(BusError):
    """A request got no reply within its timeout."""


class RawMessage(Protocol):
    """One message as it came off the wire: its bytes are not copied or decoded."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None

    async def respond(self, data: bytes) -> None: ...


RawHandler = Callable[[RawMessage], Awaitable[None]]

# The headers of the status a NATS server sends to a message's reply subject when nobody
# subscribes to its subject (nats-py hands them to a subscription as they are).
NO_RESPONDERS = {"Status": "503"}


def is_no_responders(raw: RawMessage) -> bool:
    return not raw.data and bool(raw.headers) and raw.headers.get("Status") == "503"  # type: ignore[union-attr]


PING_INTERVAL_S = 2.0


def parse_nats_urls(url: str | list[str]) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (or a list) as the list of servers; ValueError if none."""
    parts = url if isinstance(url, list) else url.split(",")
    servers = [u.strip() for u in parts if u.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


class TypedBus:
    """Typed messages over raw bytes: what ``Bus`` and its in-memory twin share.  Subclasses
    provide ``publish_raw``, ``request_raw`` and ``subscribe_raw``; ``name`` labels the logs and
    ``dropped`` counts bad messages."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dropped = 0  # malformed or unexpected messages seen (logged and dropped)
        # Connections lost so far: what was published just before one may be lost with it.
        self.disconnects = 0

    async def flush_delivered(self) -> bool:
        """Push out what was published; False if the connection dropped meanwhile (some of it
        may be lost) or the server did not confirm it."""
        before = self.disconnects
        try:
            await self.flush()
        except Exception:
            return False
        return self.disconnects == before

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Send ``data``; with ``reply``, an answer goes there, or (nobody subscribes to
        ``subject``) the server's no-responders status: empty data, ``NO_RESPONDERS`` headers."""
        raise NotImplementedError

    async def request_raw(self, subject: str, data: bytes, timeout: float) -> bytes:
        raise NotImplementedError

    async def subscribe_raw(
        self,
        subject: str,
        handler: RawHandler,
        queue: str = "",
        pending_bytes_limit: int | None = None,
    ) -> object:
        raise NotImplementedError

    async def publish(self, subject: str, msg: Message) -> None:
        await self.publish_raw(subject, encode(msg))

    async def request(self, subject: str, msg: Message, reply_type: type[R], timeout: float) -> R:
        """Send ``msg`` and decode the reply as ``reply_type`` (``ProtocolError`` if it is not)."""
        return decode(await self.request_raw(subject, encode(msg), timeout), reply_type)

    async def subscribe(
        self,
        subject: str,
        handler: Callable[[M], Awaitable[None]],
        expect: type[M] | tuple[type[Message], ...] | None = None,
        queue: str = "",
    ) -> object:
        """Decode each message and call ``handler``; bad messages are logged and dropped."""

        async def on_msg(raw: RawMessage) -> None:
            msg = self._decode(raw, expect)
            if msg is not None:
                await self._call(raw.subject, handler, msg)

        return await self.subscribe_raw(subject, on_msg, queue=queue)

    async def serve(
        self,
        subject: str,
        handler: Callable[[M], Awaitable[Message]],
        expect: type[M] | tuple[type[Message], ...] | None = None,
        queue: str = "",
    ) -> object:
        """Answer each request on ``subject`` with what ``handler`` returns (the reply side of
        ``request``); bad requests are logged and dropped unanswered."""

        async def on_msg(raw: RawMessage) -> None:
            msg = self._decode(raw, expect)
            if msg is None:
                return
            reply = await self._call(raw.subject, handler, msg)
            if reply is not None and raw.reply:
                await raw.respond(encode(reply))

        return await self.subscribe_raw(subject, on_msg, queue=queue)

    def _decode(
        self, raw: RawMessage, expect: type[Message] | tuple[type[Message], ...] | None
    ) -> Message | None:
        try:
            return decode(raw.data, expect)
        except ProtocolError as e:
            self.dropped += 1
            log.warning("%s: dropped message on %s: %s", self.name, raw.subject, e)
            return None

    async def _call(self, subject: str, handler: Callable, msg: Message) -> Message | None:
        try:
            return await handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: handler for %s failed", self.name, subject)
            return None


class Bus(TypedBus):
    """Owns one nats-py connection; ``name`` labels its logs, ``dropped`` counts bad messages."""

    def __init__(self, nc: Client, name: str) -> None:
        super().__init__(name)
        self.nc = nc
        self._dropped_waiters: set[asyncio.Future[None]] = set()

    def _lost_connection(self) -> None:
        self.disconnects += 1
        for waiter in self._dropped_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._dropped_waiters.clear()

    async def flush_delivered(self) -> bool:
        """One flush round trip, cut short by a disconnect: nats-py loses a flush's PING with its
        connection (it then waits out the whole timeout), though it sends the buffered messages
        after reconnecting, so this answers at once that delivery is not known."""
        before = self.disconnects
        dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dropped_waiters.add(dropped)
        flush = asyncio.ensure_future(self.nc.flush())
        try:
            await asyncio.wait({flush, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._dropped_waiters.discard(dropped)
        if not flush.done():
            flush.cancel()
            await asyncio.gather(flush, return_exceptions=True)
            return False
        return flush.exception() is None and self.disconnects == before

    @classmethod
    async def connect(cls, url: str | list[str], name: str, connect_timeout: float = 5.0) -> Bus:
        """Connect to ``url``: one server, or a cluster's servers (a list, or comma-separated).
        A lost server is replaced by another at once; a silent one is found by pings."""

        async def on_error(e: Exception) -> None:
            log.warning("%s: NATS error: %s", name, e)

        async def on_disconnect() -> None:
            if nc.is_closed:  # our own close() (a clean stop): nothing was lost, no reconnect
                return
            log.warning("%s: disconnected from NATS, reconnecting", name)
            if bus is not None:
                bus._lost_connection()

        async def on_reconnect() -> None:
            log.info(
                "%s: reconnected to NATS at %s", name, getattr(nc.connected_url, "netloc", "?")
            )

        bus: Bus | None = None
        servers = parse_nats_urls(url)
        nc = await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=connect_timeout,
            max_reconnect_attempts=-1,  # survive NATS restarts: retry forever
            # nats-py waits this long only before a server it tried moments ago: with a cluster,
            # the next node is tried at once
            reconnect_time_wait=0.5,
            # a node that hangs without closing the socket is given up after ~2 missed pings
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        bus = cls(nc, name)
        return bus

    @property
    def max_payload(self) -> int:
        """The server's advertised limit for one message (never assume 1 MiB)."""
        return int(self.nc.max_payload)

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        await self.nc.publish(subject, data, reply=reply, headers=headers)

    async def request_raw(self, subject: str, data: bytes, timeout: float) -> bytes:
        """Send ``data`` and return the reply's bytes; bus failures raise ``BusError``s."""
        try:
            raw = await self.nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoRespondersError(f"no responders on {subject}") from None
        except nats.errors.TimeoutError:
            raise BusTimeoutError(f"no reply on {subject} within {timeout:g}s") from None
        except nats.errors.Error as e:
            raise BusError(str(e)) from e
        return raw.data

    async def subscribe_raw(
        self,
        subject: str,
        handler: RawHandler,
        queue: str = "",
        pending_bytes_limit: int | None = None,
    ) -> object:
        """Call ``handler`` with each message undecoded (``RawMessage``; ``respond`` replies)."""
        kwargs = {} if pending_bytes_limit is None else {"pending_bytes_limit": pending_bytes_limit}

        async def on_msg(raw: Msg) -> None:
            await handler(raw)  # type: ignore[arg-type]

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg, **kwargs)

    async def flush(self) -> None:
        # nats-py may write the PING of a flush ahead of SUBs still queued; the second round trip
        # is ordered after them, so subscriptions are registered when this returns.
        await self.nc.flush()
        await self.nc.flush()

    async def close(self) -> None:
        """Drain: deliver what is in flight, then close."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing / connection lost
                await self.nc.close()
