"""Routing of token deltas: one NATS subscription per gateway, one asyncio queue per request.

Workers publish ``TokenDelta`` / ``RequestError`` for a request to ``Subjects.stream(gateway_id)``
of the gateway that owns it.  The gateway subscribes to that one subject; ``StreamRouter.dispatch``
(the subscription's handler) looks the message's ``request_id`` up and puts it on that request's
queue, where ``Generation`` reads it.  A request's queue is opened *before* its SUBMIT is sent, so a
delta that overtakes the scheduler's reply is not lost; messages for requests that are no longer
open (finished, cancelled, timed out) are counted in ``orphans`` and dropped.
"""

from __future__ import annotations

import asyncio
import logging

from loraplex.protocol import RequestError, TokenDelta

log = logging.getLogger(__name__)

StreamMessage = TokenDelta | RequestError


class StreamRouter:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[StreamMessage]] = {}
        self.orphans = 0

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

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def dispatch(self, msg: StreamMessage) -> None:
        queue = self._queues.get(msg.request_id)
        if queue is None:
            self.orphans += 1
            log.debug("dropped %s for unknown request %s", type(msg).__name__, msg.request_id)
            return
        queue.put_nowait(msg)
