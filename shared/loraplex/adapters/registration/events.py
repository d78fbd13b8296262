"""Publishes ``AdapterEvent``s on NATS.  Connects in the background and reconnects forever, so
the HTTP service is up even while NATS is not; events raised meanwhile wait in a bounded backlog
and go out, in order, once connected (nats-py buffers them itself across later reconnects)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from loraplex.bus import Bus
from loraplex.protocol import AdapterEvent, Subjects

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, nats_url: str, name: str = "adapter-store", backlog: int = 4096) -> None:
        self.nats_url = nats_url
        self.name = name
        self._bus: Bus | None = None
        self._pending: deque[AdapterEvent] = deque(maxlen=backlog)
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.nats_url)

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.is_connected

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._connect(), name=f"{self.name}-nats-connect")

    async def _connect(self) -> None:
        try:
            bus = await Bus.connect(self.nats_url, self.name)  # retries until NATS answers
        except Exception:
            log.exception("%s: cannot connect to NATS at %s; no events", self.name, self.nats_url)
            return
        while self._pending:
            await bus.publish(Subjects.ADAPTER_EVENTS, self._pending.popleft())
        self._bus = bus  # no await between the empty check and this: ordering is kept
        log.info("%s: connected to NATS, publishing adapter events", self.name)

    async def publish(self, event: AdapterEvent) -> None:
        if not self.enabled:
            return
        if self._bus is None:
            if len(self._pending) == self._pending.maxlen:
                log.warning("%s: event backlog full, dropping the oldest event", self.name)
            self._pending.append(event)
            return
        try:
            await self._bus.publish(Subjects.ADAPTER_EVENTS, event)
        except Exception as e:  # the change is committed either way; workers verify sha256
            log.warning(
                "%s: could not publish %s event for %r: %s", self.name, event.kind, event.name, e
            )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
