"""Whether the HTTP client of a request is still there, without waiting for uvicorn to say so.

uvicorn reports a client that left as ``http.disconnect`` only once asyncio calls the protocol's
``connection_lost``, and that can come late or not at all while the client is gone:

* on a FIN, h11's ``eof_received`` returns None, so asyncio closes the transport *gracefully*:
  ``connection_lost`` waits until the write buffer has drained.  A client that closed its
  sending side (``shutdown(SHUT_WR)``) and reads no more never drains it, and a stream that got
  ahead of its reader keeps a buffer for as long as it runs: its generation ran on to
  ``max_tokens`` (tests/gateway/test_disconnect_probe.py shows it with uvicorn's own protocol);
* asyncio sees a reset (RST) only through a registered reader or writer, and a transport with
  reading paused and an empty write buffer has neither.

So the gateway runs uvicorn with ``GatewayH11Protocol``, which reports EOF during a response as
a disconnect at once and hands each request its transport (``scope["extensions"]``), and
streams also ask the socket itself through ``PeerProbe``: ``poll`` with a zero timeout, which
reads nothing, says whether the peer closed (POLLRDHUP) or reset (POLLHUP, POLLERR).  A client
that only half-closes is treated as gone, as uvicorn already treats it once its buffer is empty.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any

from starlette.types import Scope
from uvicorn.protocols.http.h11_impl import H11Protocol

TRANSPORT_KEY = "loraplex.transport"
PROBE_INTERVAL_S = 0.1  # between probes while no event is sent (streams also probe per event)
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


class PeerProbe:
    """Asks one connection's socket whether its client is gone (cheap: one ``poll`` call)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self._poll: Any = None
        if sock is not None and sock.fileno() >= 0:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), _GONE)

    @classmethod
    def from_scope(cls, scope: Scope) -> PeerProbe | None:
        """The probe of this request's connection; None when the server did not give us its
        transport (another ASGI server, an in-process test client): ``http.disconnect`` only."""
        transport = (scope.get("extensions") or {}).get(TRANSPORT_KEY)
        return cls(transport) if transport is not None else None

    def gone(self) -> bool:
        # A closing transport may have closed its socket, whose number can then be reused:
        # never poll it once closing (closing means the client or the server ended it).
        if self._transport.is_closing():
            return True
        if self._poll is None:
            return False
        return any(events & _GONE for _, events in self._poll.poll(0))

    async def wait_gone(self) -> None:
        while not self.gone():
            await asyncio.sleep(PROBE_INTERVAL_S)


def still_connected(scope: Scope) -> Callable[[], bool]:
    """Whether this request's client is still connected, asked before each SUBMIT: a request
    whose client left while it was being prepared is never queued (it would take a batch slot
    until its cancel caught up with it).  Always True without a probe."""
    probe = PeerProbe.from_scope(scope)
    return (lambda: True) if probe is None else (lambda: not probe.gone())


class GatewayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the two changes above (EOF is a disconnect; the transport
    goes to the request's scope)."""

    def handle_events(self) -> None:
        super().handle_events()
        # A new request's task is created but has not run yet: its scope can still be added to.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope.setdefault("extensions", {})[TRANSPORT_KEY] = self.transport  # type: ignore[typeddict-unknown-key]

    def eof_received(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.disconnected:
            cycle.disconnected = True  # the answer in progress has nobody to go to
            cycle.message_event.set()  # wakes receive(): http.disconnect
        return super().eof_received()
