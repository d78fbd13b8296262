"""One request's buffer of stream messages: a queue that joins what its reader has not read yet.

Workers send deltas as fast as they generate; the reader (the request's ``Generation``) takes them
as fast as its client reads the answer.  A delta that continues the unread one before it is joined
to it (``pending_delta.py``), so a slow or stalled client's backlog costs about what the
completion itself is, however many deltas brought it, and the reader gets it as one delta.  The
bytes held unread are counted, here and in the tenant's ``TenantBacklog``, so that the router can
bound what one tenant's clients leave unread (``StreamRouter``).
"""

from __future__ import annotations

import asyncio

from loraplex.gateway.pending_delta import PendingDelta, approx_bytes, follows
from loraplex.protocol import RequestError, TokenDelta

StreamMessage = TokenDelta | RequestError


class TenantBacklog:
    """The unread bytes of one tenant's open requests, and those requests."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.bytes = 0
        self.streams: set[RequestStream] = set()


def _size(item: StreamMessage | PendingDelta) -> int:
    if isinstance(item, PendingDelta):
        return item.nbytes
    return approx_bytes(item) if isinstance(item, TokenDelta) else 0  # an error: next to none


class RequestStream(asyncio.Queue[StreamMessage]):
    """An ``asyncio.Queue`` of one request's messages whose unread deltas are joined.

    ``asyncio.Queue`` keeps its items in ``_queue`` and stores and takes them only through
    ``_put`` and ``_get`` (the hooks its own ``PriorityQueue`` and ``LifoQueue`` override): here
    ``_put`` joins a delta to the unread one it continues, ``_get`` hands a joined one out whole.
    """

    def __init__(self, request_id: str, backlog: TenantBacklog | None = None) -> None:
        super().__init__()
        self.request_id = request_id
        self.unread = 0  # bytes held for the reader (an estimate for deltas not joined)
        self.joined = 0  # deltas joined to the one before them
        self.failed = False  # ended by ``fail``: nothing more is kept
        self.backlog = backlog
        if backlog is not None:
            backlog.streams.add(self)

    def put_nowait(self, item: StreamMessage) -> None:
        if not self.failed:
            super().put_nowait(item)

    def _put(self, item: StreamMessage) -> None:
        tail = self._queue[-1] if self._queue else None  # type: ignore[attr-defined]
        if (
            isinstance(item, TokenDelta)
            and isinstance(tail, TokenDelta | PendingDelta)
            and follows(tail, item)
        ):
            before = _size(tail)
            try:
                pending = tail if isinstance(tail, PendingDelta) else PendingDelta(tail)
                pending.join(item)
            except (OverflowError, TypeError):  # a value the arrays cannot hold: kept as it is
                pass
            else:
                self._queue[-1] = pending  # type: ignore[attr-defined]
                self.joined += 1
                self._charge(pending.nbytes - before)
                return
        self._queue.append(item)  # type: ignore[attr-defined]
        self._charge(_size(item))

    def _get(self) -> StreamMessage:
        item = self._queue.popleft()  # type: ignore[attr-defined]
        self._charge(-_size(item))
        return item.delta() if isinstance(item, PendingDelta) else item

    def _charge(self, nbytes: int) -> None:
        self.unread += nbytes
        if self.backlog is not None:
            self.backlog.bytes += nbytes

    def fail(self, error: RequestError) -> None:
        """Drop what is unread and end the request with ``error`` (the reader gets it next);
        whatever arrives for it afterwards is dropped."""
        self._queue.clear()  # type: ignore[attr-defined]
        self._charge(-self.unread)
        super().put_nowait(error)
        self.failed = True

    def detach(self) -> None:
        """The request is closed: its unread bytes no longer count for its tenant."""
        if self.backlog is not None:
            self.backlog.bytes -= self.unread
            self.backlog.streams.discard(self)
            self.backlog = None
