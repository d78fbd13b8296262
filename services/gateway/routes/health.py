"""``GET /health`` (process alive), ``GET /ready`` (NATS connected), ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.responses import Response

from loraplex.gateway.deps import MetricsDep, ServiceDep
from loraplex.gateway.errors import error_body
from loraplex.gateway.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: connected to NATS")
async def ready(service: ServiceDep) -> JSONResponse:
    if service.bus.nc.is_connected:
        return JSONResponse({"status": "ready", "nats": True})
    body = error_body(503, "not connected to NATS", None, "nats_unavailable")
    return JSONResponse({**body, "status": "unavailable", "nats": False}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE)
