"""``GET /metrics`` on its own listener (``--metrics-host``, ``--metrics-port``; loopback by
default), never on the public API port.

The series name tenants and adapters (token counts, per-adapter requests), so they belong to the
operator's network, not to every API client: Prometheus scrapes a separate port, as it does for
Triton (8002, beside HTTP on 8000), TGI and SGLang's router.  The public port answers 404 for
``/metrics``.  The listener (``loraplex.status_server``, which the scheduler and workers use too)
runs beside the API server in the gateway's lifespan and shares its ``GatewayMetrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from loraplex.gateway.metrics import GatewayMetrics
from loraplex.status_server import StatusListenError, metrics_route, status_listener

MetricsListenError = StatusListenError  # the name the gateway's callers and tests know


def metrics_app(metrics: GatewayMetrics) -> Starlette:
    return Starlette(routes=[metrics_route(metrics.registry)])


@contextlib.asynccontextmanager
async def metrics_listener(metrics: GatewayMetrics, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``metrics`` on ``host:port`` while the context is open; yields the /metrics URL."""
    async with status_listener(metrics_app(metrics), host, port, "/metrics") as base:
        yield base + "/metrics"
