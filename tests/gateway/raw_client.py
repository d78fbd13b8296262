"""A streaming completion over a raw socket whose client reads when the test says: with a small
receive window, the gateway's socket and write buffer back up soon after it stops reading."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from tests.gateway.conftest import MODEL_ID

BOUND_S = 30.0  # only so a regression fails instead of hanging


async def unread_stream(port: int, api_key: str, **body: Any) -> socket.socket:
    """Send a streaming ``/v1/completions`` request (HTTP/1.0: the answer ends with the
    connection) and read nothing of its answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    data = json.dumps({"model": MODEL_ID, "prompt": "hi", "stream": True, **body}).encode()
    head = (
        f"POST /v1/completions HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode() + data)
    return sock


async def read_events(sock: socket.socket) -> list[str]:
    """Read the answer to its end: the data of its SSE events, ``[DONE]`` last."""
    loop, got = asyncio.get_running_loop(), bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), BOUND_S):
        got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e]
