"""``GET /metrics`` on its own listener (``--metrics-host``, ``--metrics-port``; loopback by
default), never on the public API port.

The series name tenants (token counts, queue depths, fairness counters), so they belong to the
operator's network, not to every API client: Prometheus scrapes a separate port, as it does for
Triton (8002, beside HTTP on 8000), TGI and SGLang's router.  The public port answers 404 for ``/metrics``.  The listener
runs beside the API server in the gateway's lifespan and shares its ``GatewayMetrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loraplex.errors import LoraplexError
from loraplex.gateway.metrics import CONTENT_TYPE, GatewayMetrics


class MetricsListenError(LoraplexError):
    """The metrics listener cannot bind its address (the gateway does not start)."""


def metrics_app(metrics: GatewayMetrics) -> Starlette:
    async def render(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", render, methods=["GET"])])


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the API server (which stops it on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MetricsListenError(f"cannot serve /metrics on {host}:{port}: {e.strerror}") from e
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def metrics_listener(metrics: GatewayMetrics, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``metrics`` on ``host:port`` while the context is open; yields the /metrics URL."""
    sock = _bind(host, port)  # here, so a taken port fails the start-up with a clear message
    config = uvicorn.Config(metrics_app(metrics), log_level="warning", lifespan="off")
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-metrics")
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
            raise MetricsListenError(f"the /metrics listener on {host}:{port} did not start")
        yield f"http://{host}:{sock.getsockname()[1]}/metrics"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
