"""A client that leaves is noticed at once, even where uvicorn's ``http.disconnect`` comes late.

uvicorn's h11 protocol (the one the gateway runs) closes a transport gracefully on the client's
FIN, so while an answer's write buffer is not empty ``connection_lost``, and ``http.disconnect``
with it, wait for a drain that a client which stopped reading never allows.  These tests build
exactly that: a raw socket client that reads the headers, stops reading until the server's write
buffer backs up, then half-closes (FIN, socket kept open).  With uvicorn's own ``H11Protocol``
the stream runs on until the client process exits; see services/gateway/peer.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loraplex.gateway.peer import TRANSPORT_KEY, GatewayH11Protocol, PeerProbe
from loraplex.gateway.responder import SSEResponse
from loraplex.tooling.ports import free_port

BIG = "data: " + "x" * 16384 + "\n\n"  # a few of these fill the kernel's socket buffers
BOUND_S = 30.0  # only so a regression fails instead of hanging; the fix answers in ms


class Seen:
    """What the server side saw of one request."""

    def __init__(self) -> None:
        self.backed_up = asyncio.Event()  # the server's write buffer holds data
        self.closed = asyncio.Event()  # the stream's on_close ran / http.disconnect came


def _write_buffer(scope: Scope) -> int:
    return scope["extensions"][TRANSPORT_KEY].get_write_buffer_size()


def _sse_app(seen: Seen) -> Starlette:
    """The gateway's SSEResponse over an endless stream of big events."""

    async def stream(request: Request) -> SSEResponse:
        async def events() -> AsyncIterator[str]:
            while True:
                yield BIG
                if _write_buffer(request.scope) > 0:
                    seen.backed_up.set()
                await asyncio.sleep(0)

        async def on_close() -> None:
            seen.closed.set()

        return SSEResponse(events(), on_close)

    return Starlette(routes=[Route("/stream", stream, methods=["POST"])])


def _raw_app(seen: Seen) -> object:
    """No probe: writes until its buffer backs up, then waits for ``http.disconnect`` alone."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the (empty) body
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def write() -> None:
            while True:
                await send({"type": "http.response.body", "body": BIG.encode(), "more_body": True})
                if _write_buffer(scope) > 0:
                    seen.backed_up.set()
                await asyncio.sleep(0)

        writer = asyncio.ensure_future(write())
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
            seen.closed.set()
        finally:
            writer.cancel()

    return app


async def _serve_with_gateway_protocol(app: object, port: int):  # type: ignore[no-untyped-def]
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    config.http = GatewayH11Protocol  # what services/gateway/__main__.py runs
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    return server, task


async def _half_close_when_backed_up(port: int, seen: Seen) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    request = b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    await loop.sock_sendall(sock, request)
    assert (await loop.sock_recv(sock, 64)).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(seen.backed_up.wait(), BOUND_S)  # then: read nothing more
    sock.shutdown(socket.SHUT_WR)  # FIN; the socket stays open and unread
    return sock


@pytest.mark.parametrize("make_app", [_sse_app, _raw_app], ids=["sse-response", "http-disconnect"])
async def test_a_client_that_half_closes_is_gone_at_once(make_app):
    seen = Seen()
    port = free_port()
    server, task = await _serve_with_gateway_protocol(make_app(seen), port)
    try:
        sock = await _half_close_when_backed_up(port, seen)
        try:
            await asyncio.wait_for(seen.closed.wait(), BOUND_S)
        finally:
            sock.close()
    finally:
        server.should_exit = True
        await task


async def test_probe_sees_a_close_that_asyncio_cannot():
    """Reading paused and nothing to write: asyncio watches the socket not at all, yet the probe
    sees the client's close (and its reset) at once."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Quiet(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.pause_reading()  # type: ignore[attr-defined]
            got.set_result(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Quiet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for how in ("close", "reset"):
            client = socket.create_connection(("127.0.0.1", port))
            transport = await got
            got = loop.create_future()
            probe = PeerProbe(transport)
            assert not probe.gone()
            if how == "reset":  # unread data in the client's buffer is not needed: SO_LINGER 0
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            client.close()
            for _ in range(200):
                if probe.gone():
                    break
                await asyncio.sleep(0.01)
            assert probe.gone(), how
            assert not transport.is_closing(), "asyncio noticed it: the probe was not needed"
            transport.close()
    finally:
        server.close()


async def test_no_transport_in_scope_means_no_probe():
    assert PeerProbe.from_scope({"type": "http", "extensions": {}}) is None
    assert PeerProbe.from_scope({"type": "http"}) is None
