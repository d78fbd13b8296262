"""A small HTTP listener beside a service's real work: ``/health``, ``/ready`` and ``/metrics``.

The gateway serves ``/metrics`` on one (its API port has its own ``/health`` and ``/ready``); the
scheduler and the workers, which otherwise speak only NATS, serve all three on one
(``--metrics-host``, ``--metrics-port``), so that compose and Kubernetes can probe them and
Prometheus can scrape each process once.  The listener runs in the service's own event loop
(uvicorn on a socket bound first, so a taken port fails the start with a clear message) and leaves
signals to the service.

``/health``: the process answers (liveness).  ``/ready``: it can serve now (``ready()`` returns
``(ok, detail)``; 503 with the detail otherwise).  ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loraplex.errors import LoraplexError

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class StatusListenError(LoraplexError):
    """The status listener cannot bind its address (the service does not start)."""


def metrics_route(registry: CollectorRegistry) -> Route:
    async def render(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", render, methods=["GET"])


def health_routes(ready: Readiness) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readiness(request: Request) -> Response:
        ok, detail = ready()
        if ok:
            return JSONResponse({"status": "ready", **detail})
        return JSONResponse({"status": "unavailable", **detail}, status_code=503)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", readiness, methods=["GET"]),
    ]


def status_app(registry: CollectorRegistry, ready: Readiness) -> Starlette:
    """``/health``, ``/ready`` and ``/metrics`` of one process (404 for anything else)."""
    return Starlette(routes=[*health_routes(ready), metrics_route(registry)])


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the service (which stops it on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StatusListenError(f"cannot serve {what} on {host}:{port}: {e.strerror}") from e
    sock.listen(128)
    return sock


class StatusListener:
    """``app`` served on ``host:port`` between ``start()`` (which returns ``http://host:port``)
    and ``stop()``; for services whose main function is not one ``async with``."""

    def __init__(
        self, app: Starlette, host: str, port: int, what: str = "/health, /ready and /metrics"
    ) -> None:
        self.app, self.host, self.port, self.what = app, host, port, what
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> str:
        self._sock = sock = bind(self.host, self.port, self.what)
        self._server = server = _Server(
            uvicorn.Config(self.app, log_level="warning", lifespan="off")
        )
        self._task = task = asyncio.create_task(
            server.serve(sockets=[sock]), name=f"status-{self.port}"
        )
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await self.stop()
            raise StatusListenError(
                f"the listener for {self.what} on {self.host}:{self.port} did not start"
            )
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._sock is not None:
            self._sock.close()


@contextlib.asynccontextmanager
async def status_listener(
    app: Starlette, host: str, port: int, what: str = "/health, /ready and /metrics"
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` while the context is open; yields ``http://host:port``."""
    listener = StatusListener(app, host, port, what)
    url = await listener.start()
    try:
        yield url
    finally:
        await listener.stop()
