"""A request body that stalls or trickles ends with 408 (pure ASGI middleware, every route).

uvicorn waits for a body's bytes for as long as the connection stays open, so a client that
declares a body and sends nothing (or a byte a second) would hold its connection, and the
request's task, forever.  Here each ``receive`` of the body waits at most ``timeout_s``, and the
whole body at most ``timeout_s`` plus one second per ``min_rate`` bytes received so far (the
minimum rate of Apache's mod_reqtimeout): a trickle ends, a slow but steady upload does not.

On expiry the middleware answers 408 itself (OpenAI error body, ``Connection: close``) and tells
the app the client left (``http.disconnect``, which every route already handles); whatever the
app answers after that is dropped.  Only reading the request is bounded: once its body has ended
or an answer has begun (a stream), ``receive`` is passed through untouched.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.gateway.early_answer import DISCONNECT, answer_and_close
from loraplex.http_errors import error_body

CODE = "request_timeout"


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float, min_rate: float) -> None:
        self.app = app
        self.timeout_s = timeout_s  # <= 0: no limit
        self.min_rate = min_rate  # bytes/s; <= 0: no minimum

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        body = _TimedBody(receive, send, self.timeout_s, self.min_rate)
        await self.app(scope, body.receive, body.send)


class _TimedBody:
    """One request's ``receive`` and ``send``, with the body's clock."""

    def __init__(self, receive: Receive, send: Send, timeout_s: float, min_rate: float) -> None:
        self._receive = receive
        self._send = send
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.ended = False  # the body has ended (or the client left)
        self.started = False  # an answer has begun
        self.answered = False  # we answered 408: the app's answer goes nowhere
        self.received = 0
        self.first: float | None = None  # loop time of the first receive

    def _wait_s(self, now: float) -> float:
        if self.first is None:
            self.first = now
        if self.min_rate <= 0:
            return self.timeout_s
        allowed = self.first + self.timeout_s + self.received / self.min_rate
        return max(0.0, min(self.timeout_s, allowed - now))

    async def receive(self) -> Message:
        if self.answered:
            return DISCONNECT
        if self.ended or self.started:
            return await self._receive()
        wait_s = self._wait_s(asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(wait_s):
                message = await self._receive()
        except TimeoutError:
            if self.started:  # an answer began meanwhile: nothing left to bound
                return await self._receive()
            await self._time_out()
            return DISCONNECT
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.ended = True
        self.received += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _time_out(self) -> None:
        self.answered = True
        message = (
            f"the request body did not arrive in time (stalled for {self.timeout_s:g} s, or "
            f"slower than {self.min_rate:g} bytes/s); {self.received} bytes received"
            if self.min_rate > 0
            else f"the request body stalled for {self.timeout_s:g} s; "
            f"{self.received} bytes received"
        )
        await answer_and_close(408, error_body(408, message, None, CODE), self._send)
