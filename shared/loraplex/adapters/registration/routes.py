"""The adapter routes: thin; the work is in uploads / adapter_paths / registrar / store."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraplex.adapters.registration.adapter_paths import read_path_registration
from loraplex.adapters.registration.deps import CurrentTenant, State
from loraplex.adapters.registration.uploads import (
    AdapterUpload,
    check_text,
    invalid,
    read_multipart,
)

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
health = APIRouter(tags=["health"])


async def _read_upload(request: Request, state: State) -> AdapterUpload:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit, spool_dir = state.config.max_adapter_bytes, state.config.upload_dir
    if ctype == "multipart/form-data":
        return await read_multipart(request, limit, spool_dir)
    if ctype == "application/json":
        return await read_path_registration(request, state.adapters_root, limit, spool_dir)
    raise invalid(
        "send multipart/form-data (name + files adapter_config.json, adapter_model.safetensors) "
        f"or application/json (name + path under the adapters root), not {ctype or 'no body'!r}"
    )


@router.post("", status_code=201, summary="Register (or replace) an adapter")
async def register_adapter(request: Request, tenant: CurrentTenant, state: State) -> JSONResponse:
    async with state.registrar.upload_slot(tenant):  # 429 before reading the body
        upload = await _read_upload(request, state)
        reg = await state.registrar.register(tenant, upload)  # deletes the upload's spool
    return JSONResponse(reg.info.to_json(), status_code=200 if reg.replaced else 201)


@router.get("", summary="Adapters visible to the caller")
async def list_adapters(tenant: CurrentTenant, state: State) -> dict:
    infos = await state.store.list_for(tenant.name)
    return {"object": "list", "data": [i.to_json(tenant.name) for i in infos]}


@router.get("/{name}", summary="One adapter's metadata")
async def get_adapter(name: str, tenant: CurrentTenant, state: State) -> dict:
    check_text(name, "name")
    return (await state.store.get_for(tenant.name, name)).to_json(tenant.name)


@router.delete("/{name}", summary="Delete an adapter (owner only)")
async def delete_adapter(name: str, tenant: CurrentTenant, state: State) -> dict:
    check_text(name, "name")
    info = await state.registrar.delete(tenant, name)
    return {"id": info.name, "object": "adapter.deleted", "deleted": True}


@health.get("/health", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@health.get("/ready", summary="Readiness: Redis answers")
async def ready(state: State) -> JSONResponse:
    redis_ok = await state.store.ping()
    body = {
        "status": "ready" if redis_ok else "unavailable",
        "redis": redis_ok,
        "nats": state.events.connected if state.events.enabled else None,
    }
    return JSONResponse(body, status_code=200 if redis_ok else 503)
