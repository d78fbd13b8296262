"""``GET /health`` (process alive), ``GET /ready`` (NATS connected).  ``/metrics`` is not here:
it names tenants, so it is served on its own listener (``metrics_server.py``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from loraplex.gateway.deps import ServiceDep
from loraplex.gateway.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: connected to NATS")
async def ready(service: ServiceDep) -> JSONResponse:
    if service.bus.is_connected:
        return JSONResponse({"status": "ready", "nats": True})
    body = error_body(503, "not connected to NATS", None, "nats_unavailable")
    return JSONResponse({**body, "status": "unavailable", "nats": False}, status_code=503)
