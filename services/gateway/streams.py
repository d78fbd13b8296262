"""Routing of token deltas: one NATS subscription per gateway, one asyncio queue per request.

Workers publish ``TokenDelta`` / ``RequestError`` for a request to ``Subjects.stream(gateway_id)``
of the gateway that owns it.  The gateway subscribes to that one subject; ``StreamRouter.dispatch``
(the subscription's handler) looks the message's ``request_id`` up and puts it on that request's
queue, where ``Generation`` reads it.  A request's queue is opened *before* its SUBMIT is sent, so a
delta that overtakes the scheduler's reply is not lost; messages for requests that are no longer
open (finished, cancelled, timed out) are counted in ``orphans`` and dropped.

A token delta for a request that is no longer open and not finished means it still generates
somewhere: its cancel was lost (core NATS drops what crosses a dying node), or it outlived an error
the client already got.  The router asks again to cancel it (``bind_cancel``), at most once
a second per request, so no request runs on to ``max_tokens`` for nobody.

A request's queue joins the deltas its reader has not read yet (``request_stream.py``): a client
that reads slowly gets bigger chunks, and its backlog costs about what its completion is.  What a
tenant's open requests hold unread is bounded too (``unread_limit``, from
``LORAPLEX_GATEWAY_STREAM_BUFFER_MB``): past it, the tenant's request with the most unread is
failed (its client gets a 429 error after what it read, its workers a cancel), so clients that
never read cannot grow the gateway until it dies; other tenants' requests are never touched.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from loraplex.gateway.request_stream import RequestStream, StreamMessage, TenantBacklog
from loraplex.protocol import RequestError, TokenDelta

__all__ = ["StreamMessage", "StreamRouter"]

log = logging.getLogger(__name__)

ORPHAN_CANCEL_GAP_S = 1.0  # one cancel per orphaned request per this, however many deltas come
MAX_ORPHANS_REMEMBERED = 4096
ORPHAN_REASON = "the gateway no longer has the request"
UNREAD_CODE = 429
UNREAD_REASON = "its client did not read the answer"
MIB = 1024 * 1024


class StreamRouter:
    def __init__(self, unread_limit: int = 0) -> None:
        """``unread_limit``: bytes of deltas one tenant's open requests may hold unread; 0: no
        limit."""
        self._queues: dict[str, RequestStream] = {}
        self._backlogs: dict[str, TenantBacklog] = {}  # tenant -> its open requests' backlog
        self.unread_limit = unread_limit
        self.orphans = 0
        self._cancel: Callable[[str, str], Awaitable[None]] | None = None
        self._cancelled_at: OrderedDict[str, float] = OrderedDict()  # orphan -> last cancel
        self.orphan_cancels = 0
        self.unread_failed = 0  # requests failed for their tenant's unread backlog

    def bind_cancel(self, cancel: Callable[[str, str], Awaitable[None]]) -> None:
        """``cancel(request_id, reason)`` asks the scheduler to cancel a request still
        generating for nobody (the gateway service's cancel)."""
        self._cancel = cancel

    def __len__(self) -> int:
        return len(self._queues)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._queues

    def open(self, request_id: str, tenant: str = "") -> RequestStream:
        if request_id in self._queues:
            raise KeyError(f"request {request_id!r} is already open")
        backlog = self._backlogs.get(tenant)
        if backlog is None:
            backlog = self._backlogs[tenant] = TenantBacklog(tenant)
        queue = self._queues[request_id] = RequestStream(request_id, backlog)
        return queue

    def close(self, request_id: str, cancelled: bool = False) -> None:
        """Stop routing to ``request_id``; ``cancelled``: its owner is sending the cancel now, so
        the deltas already on their way are not orphans to cancel again within the gap."""
        queue = self._queues.pop(request_id, None)
        if queue is not None and (backlog := queue.backlog) is not None:
            queue.detach()
            if not backlog.streams:
                del self._backlogs[backlog.tenant]
        if cancelled:
            self._remember_cancel(request_id, time.monotonic())

    def unread(self, tenant: str = "") -> int:
        """Bytes of deltas ``tenant``'s open requests hold unread (an estimate)."""
        backlog = self._backlogs.get(tenant)
        return backlog.bytes if backlog is not None else 0

    async def dispatch(self, msg: StreamMessage) -> None:
        queue = self._queues.get(msg.request_id)
        if queue is None:
            self.orphans += 1
            log.debug("dropped %s for unknown request %s", type(msg).__name__, msg.request_id)
            if isinstance(msg, TokenDelta) and msg.finish_reason is None and self._due(msg):
                self.orphan_cancels += 1
                await self._cancel(msg.request_id, ORPHAN_REASON)  # type: ignore[misc]
            return
        queue.put_nowait(msg)
        backlog = queue.backlog
        if self.unread_limit and backlog is not None and backlog.bytes > self.unread_limit:
            await self._fail_unread(backlog)

    async def _fail_unread(self, backlog: TenantBacklog) -> None:
        """The tenant's clients left more unread than its limit: fail its requests with the
        most unread (a client that stopped reading) until it is under; cancel them upstream."""
        while backlog.bytes > self.unread_limit:
            open_ = (q for q in backlog.streams if not q.failed)
            victim = max(open_, key=lambda q: q.unread, default=None)
            if victim is None or victim.unread <= 0:
                return
            self.unread_failed += 1
            limit_mib = self.unread_limit / MIB
            log.warning(
                "tenant %s: %.1f MiB of tokens unread (limit %g MiB); failing request %s "
                "(%.1f MiB unread): %s",
                backlog.tenant, backlog.bytes / MIB, limit_mib, victim.request_id,
                victim.unread / MIB, UNREAD_REASON,
            )  # fmt: skip
            message = (
                f"the request was cancelled: its client did not read the answer as fast as it "
                f"was generated, and this tenant's requests held more than {limit_mib:g} MiB of "
                "unread tokens in the gateway"
            )
            victim.fail(RequestError(victim.request_id, UNREAD_CODE, message))
            self._remember_cancel(victim.request_id, time.monotonic())
            if self._cancel is not None:
                await self._cancel(victim.request_id, UNREAD_REASON)

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
