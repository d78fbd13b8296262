"""A connection must send a request's complete headers within a deadline (uvicorn's h11).

uvicorn (0.55) times a connection only while it is idle after an answer (``timeout_keep_alive``),
and cancels even that at the first byte that comes.  A connection that never sends a request, or
sends one header line a second (slowloris), was held forever, and enough of them use up the
gateway's open files for every tenant.  ``TimedH11Protocol`` arms a timer when the connection
opens and whenever an answer ends (waiting for the next request), and cancels it once a
request's headers are complete (the body has its own deadline: ``body_timeout.py``).  On expiry
a connection that sent part of a request gets a 408 (OpenAI error body), then it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import h11

from loraplex import env
from loraplex.gateway.peer import GatewayH11Protocol
from loraplex.http_errors import error_body


def _timeout_answer() -> bytes:
    body = json.dumps(
        error_body(408, "the request headers did not arrive in time", None, "request_timeout")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# Written raw: h11 cannot send a response to a request it has not parsed.
REQUEST_TIMEOUT = _timeout_answer()


class TimedH11Protocol(GatewayH11Protocol):
    """The gateway's h11 protocol (``peer.py``) plus the header deadline
    (``LORAPLEX_GATEWAY_HEADER_TIMEOUT_S``, read once per connection; 0: none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = env.GATEWAY_HEADER_TIMEOUT_S.get()
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaited_after: object = None  # the cycle before the request being waited for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.cycle is not self._awaited_after:
            self._disarm()  # a new request's headers are complete: its cycle exists

    def on_response_complete(self) -> None:
        # armed first: a pipelined request that the call below parses disarms it at once
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if self.header_timeout_s > 0:
            self._awaited_after = self.cycle
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.cycle is not self._awaited_after:
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(REQUEST_TIMEOUT)  # part of a request came: say why we close
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()
