"""Routing of token deltas: one NATS subscription per gateway, one asyncio queue per request.

Workers publish ``TokenDelta`` / ``RequestError`` for a request to ``Subjects.stream(gateway_id)``
of the gateway that owns it.  The gateway subscribes to that one subject; ``StreamRouter.dispatch``
(the subscription's handler) looks the message's ``request_id`` up and puts it on that request's
queue, where ``Generation`` reads it.  A request's queue is opened *before* its SUBMIT is sent, so a
delta that overtakes the scheduler's reply is not lost; messages for requests that are no longer
open (finished, cancelled, timed out) are counted in ``orphans`` and dropped.

A token delta for a request that is no longer open and not finished means it still generates
somewhere: its cancel was lost (core NATS drops what crosses a dying node), or it outlived an error
the client already got.  The router asks again to cancel it (``bind_orphan_cancel``), at most once
a second per request, so no request runs on to ``max_tokens`` for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from loraplex.protocol import RequestError, TokenDelta

log = logging.getLogger(__name__)

ORPHAN_CANCEL_GAP_S = 1.0  # one cancel per orphaned request per this, however many deltas come
MAX_ORPHANS_REMEMBERED = 4096

StreamMessage = TokenDelta | RequestError


class StreamRouter:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[StreamMessage]] = {}
        self.orphans = 0
        self._cancel: Callable[[str], Awaitable[None]] | None = None
        self._cancelled_at: OrderedDict[str, float] = OrderedDict()  # orphan -> last cancel
        self.orphan_cancels = 0

    def bind_orphan_cancel(self, cancel: Callable[[str], Awaitable[None]]) -> None:
        """``cancel(request_id)`` asks the scheduler to cancel a request still generating for
        nobody (the gateway service's cancel)."""
        self._cancel = cancel

    def __len__(self) -> int:
        return len(self._queues)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._queues

    def open(self, request_id: str) -> asyncio.Queue[StreamMessage]:
        if request_id in self._queues:
            raise KeyError(f"request {request_id!r} is already open")
        queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    def close(self, request_id: str, cancelled: bool = False) -> None:
        """Stop routing to ``request_id``; ``cancelled``: its owner is sending the cancel now, so
        the deltas already on their way are not orphans to cancel again within the gap."""
        self._queues.pop(request_id, None)
        if cancelled:
            self._remember_cancel(request_id, time.monotonic())

    async def dispatch(self, msg: StreamMessage) -> None:
        queue = self._queues.get(msg.request_id)
        if queue is None:
            self.orphans += 1
            log.debug("dropped %s for unknown request %s", type(msg).__name__, msg.request_id)
            if isinstance(msg, TokenDelta) and msg.finish_reason is None and self._due(msg):
                self.orphan_cancels += 1
                await self._cancel(msg.request_id)  # type: ignore[misc]
            return
        queue.put_nowait(msg)

    def _due(self, msg: TokenDelta) -> bool:
        """Whether to cancel this orphan now (bound, and not within the last gap)."""
        if self._cancel is None:
            return False
        now = time.monotonic()
        last = self._cancelled_at.get(msg.request_id)
        if last is not None and now - last < ORPHAN_CANCEL_GAP_S:
            return False
        self._remember_cancel(msg.request_id, now)
        return True

    def _remember_cancel(self, request_id: str, now: float) -> None:
        self._cancelled_at[request_id] = now
        self._cancelled_at.move_to_end(request_id)
        while len(self._cancelled_at) > MAX_ORPHANS_REMEMBERED:
            self._cancelled_at.popitem(last=False)
