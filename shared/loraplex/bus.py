"""A thin typed wrapper over nats-py: publish/subscribe messages of ``loraplex.protocol``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from loraplex.protocol import Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
Handler = Callable[[Message], Awaitable[None]]


class Bus:
    def __init__(self, nc: Client, name: str) -> None:
        self.nc = nc
        self.name = name
        self.dropped = 0  # malformed or unexpected messages seen (logged and dropped)

    @classmethod
    async def connect(cls, url: str, name: str, connect_timeout: float = 5.0) -> Bus:
        async def on_error(e: Exception) -> None:
            log.warning("%s: NATS error: %s", name, e)

        async def on_disconnect() -> None:
            log.warning("%s: disconnected from NATS, reconnecting", name)

        async def on_reconnect() -> None:
            log.info("%s: reconnected to NATS", name)

        nc = await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout,
            max_reconnect_attempts=-1,  # survive NATS restarts: retry forever
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        return cls(nc, name)

    @property
    def max_payload(self) -> int:
        """The server's advertised limit for one message (never assume 1 MiB)."""
        return int(self.nc.max_payload)

    async def publish(self, subject: str, msg: Message) -> None:
        await self.nc.publish(subject, encode(msg))

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def subscribe(
        self,
        subject: str,
        handler: Callable[[M], Awaitable[None]],
        expect: type[M] | tuple[type[Message], ...] | None = None,
        queue: str = "",
    ) -> object:
        """Decode each message and call ``handler``; bad messages are logged and dropped."""

        async def on_msg(raw: Msg) -> None:
            try:
                msg = decode(raw.data, expect)
            except ProtocolError as e:
                self.dropped += 1
                log.warning("%s: dropped message on %s: %s", self.name, raw.subject, e)
                return
            try:
                await handler(msg)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler for %s failed", self.name, raw.subject)

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg)

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
