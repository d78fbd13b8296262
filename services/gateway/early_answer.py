"""Answer a request before (or instead of) reading its body, then close its connection.

uvicorn keeps a connection open after an answer while the client is still sending the body it
ignores (and restarts no timer while bytes come), so a refusal from the headers (413, 401, 429)
or a 408 for a stalled body goes out with ``Connection: close``.  Closing a socket with unread
bytes in it resets the connection, and a client still writing its body may then never read the
answer; so, like nginx's lingering close, what the client still sends is read and dropped for a
short, bounded while after the answer is out (``linger_s``), before the connection closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Send

from loraplex.http_errors import json_error

CLOSE = (b"connection", b"close")
LINGER_S = 3.0  # after an answer to a client still sending, at most this long before closing
DRAIN_CAP = 64 * 1024 * 1024  # and at most this much of its body read (and dropped)
DISCONNECT: Message = {"type": "http.disconnect"}


async def answer_and_close(
    status: int,
    body: dict[str, Any],
    send: Send,
    receive: Receive | None = None,
    linger_s: float = 0.0,
) -> None:
    """Send the OpenAI error ``body`` with ``status`` and ``Connection: close``; with
    ``receive``, first drop what the client still sends for up to ``linger_s`` (the answer is
    complete on the wire already: its Content-Length is sent, only the close waits)."""
    response = json_error(status, body)
    headers = [*response.raw_headers, CLOSE]
    linger = receive is not None and linger_s > 0
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": linger})
    if linger:
        assert receive is not None
        await drain(receive, linger_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain(receive: Receive, linger_s: float) -> None:
    """Read and drop the body until it ends, the client leaves, ``linger_s`` passes or
    ``DRAIN_CAP`` bytes came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + linger_s
    drained = 0
    while drained < DRAIN_CAP:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            async with asyncio.timeout(left):
                message = await receive()
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))
