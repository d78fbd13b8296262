"""OpenAI's Files API, for batch input and output: ``POST /v1/files`` (multipart ``file`` and
``purpose=batch``, optional ``expires_after[anchor]``/``expires_after[seconds]``), ``GET /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` and
``DELETE /v1/files/{id}`` (``batches/store.py`` keeps them per tenant, within its budget)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from starlette.responses import Response

from loraplex.gateway.batches.errors import BatchNotFoundError
from loraplex.gateway.batches.expiry import file_life_s
from loraplex.gateway.batches.objects import FILE_ID, file_object, new_file_id
from loraplex.gateway.batches.store import BatchStore
from loraplex.gateway.deps import TenantDep
from loraplex.gateway.errors import InvalidParamError, PayloadTooLargeError, shown_id

router = APIRouter(prefix="/v1", tags=["batches"])
MAX_FILENAME = 255
READ_BLOCK = 1024 * 1024


def batch_store(request: Request) -> BatchStore:
    return request.app.state.batches.store


async def owned_file(store: BatchStore, tenant: str, file_id: str) -> dict[str, Any]:
    meta = await store.get_file(tenant, file_id) if FILE_ID.fullmatch(file_id) else None
    if meta is None:
        raise BatchNotFoundError(f"no file {shown_id(file_id)}", "file_id")
    return meta


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's list object: ``limit`` items after the one whose id is ``after``."""
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


@router.post("/files", summary="Upload a file (OpenAI Files API; purpose 'batch')")
async def upload_file(
    tenant: TenantDep,
    request: Request,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    expires_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    expires_seconds: Annotated[str | None, Form(alias="expires_after[seconds]")] = None,
) -> dict[str, Any]:
    if purpose != "batch":
        raise InvalidParamError(
            "purpose must be 'batch' (the only files this server keeps)", "purpose"
        )
    if len((await request.form()).getlist("file")) > 1:  # parsed once: Starlette keeps it
        raise InvalidParamError("send one file per upload (this one has several)", "file")
    store = batch_store(request)
    policy = (
        None
        if expires_anchor is None and expires_seconds is None
        else {"anchor": expires_anchor, "seconds": expires_seconds}
    )
    life_s = file_life_s(policy, store.limits.ttl_s, "expires_after")
    limit = store.limits.file_max_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLargeError(f"the file is larger than {limit / 2**20:.4g} MiB")
    name = (file.filename or "upload.jsonl")[-MAX_FILENAME:]
    if any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000 for c in name):
        raise InvalidParamError("the file name holds control characters or invalid text", "file")
    meta = file_object(new_file_id(), name, purpose, len(content), int(time.time()), life_s)
    await store.put_file(tenant.name, meta, content, forced=False)
    return meta


@router.get("/files", summary="List files")
async def list_files(
    tenant: TenantDep,
    request: Request,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    files = await batch_store(request).list_files(tenant.name)
    if purpose is not None:
        files = [f for f in files if f["purpose"] == purpose]
    return page(files[::-1] if order == "asc" else files, after, limit)


@router.get("/files/{file_id}", summary="Retrieve a file's object")
async def get_file(file_id: str, tenant: TenantDep, request: Request) -> dict[str, Any]:
    return await owned_file(batch_store(request), tenant.name, file_id)


@router.get("/files/{file_id}/content", summary="Retrieve a file's content")
async def file_content(file_id: str, tenant: TenantDep, request: Request) -> Response:
    store = batch_store(request)
    await owned_file(store, tenant.name, file_id)
    content = await store.file_content(tenant.name, file_id)
    if content is None:  # deleted or expired in between
        raise BatchNotFoundError(f"no file {shown_id(file_id)}", "file_id")
    return Response(content, media_type="application/octet-stream")


@router.delete("/files/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, tenant: TenantDep, request: Request) -> dict[str, Any]:
    store = batch_store(request)
    await owned_file(store, tenant.name, file_id)
    if await store.delete_file(tenant.name, file_id) is None:
        raise BatchNotFoundError(f"no file {shown_id(file_id)}", "file_id")
    return {"id": file_id, "object": "file", "deleted": True}
