"""``GET /health`` (process alive), ``GET /ready`` (can serve: NATS connected, and the scheduler's
latest broadcast showed a colocated worker or a prefill and a decode worker; ``capacity.py``).
``/metrics`` is not here: it names tenants, so it is served on its own listener
(``metrics_server.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraplex import __version__
from loraplex.gateway.deps import ServiceDep
from loraplex.gateway.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/version", summary="The server's version (vLLM)")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/ready", summary="Readiness: NATS connected and workers that can serve")
async def ready(service: ServiceDep, request: Request) -> JSONResponse:
    connected = service.bus.is_connected
    capable, detail = request.app.state.capacity.ready()
    state = {"nats": connected, **detail}
    if connected and capable:
        return JSONResponse({"status": "ready", **state})
    if not connected:
        body = error_body(503, "not connected to NATS", None, "nats_unavailable")
    elif not detail["scheduler"]:
        body = error_body(503, "no scheduler has been heard from", None, "scheduler_unavailable")
    else:
        msg = "the scheduler sees no worker set that can serve (prefill + decode, or colocated)"
        body = error_body(503, msg, None, "no_capacity")
    return JSONResponse({**body, "status": "unavailable", **state}, status_code=503)
