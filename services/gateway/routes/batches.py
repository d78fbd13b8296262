"""OpenAI's Batch API: ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}`` and
``POST /v1/batches/{id}/cancel`` (``batches/runner.py`` runs them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from loraplex.gateway.batches.errors import BatchNotFoundError
from loraplex.gateway.batches.expiry import file_life_s
from loraplex.gateway.batches.limits import COMPLETION_WINDOW
from loraplex.gateway.batches.objects import BATCH_ID
from loraplex.gateway.batches.runner import BatchRunner
from loraplex.gateway.deps import TenantDep
from loraplex.gateway.errors import shown_id

router = APIRouter(prefix="/v1", tags=["batches"])


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str = COMPLETION_WINDOW
    metadata: dict[str, Any] | None = None
    output_expires_after: Any = None  # how long the output and error files live (expiry.py)


def runner(request: Request) -> BatchRunner:
    return request.app.state.batches


def _checked(batch_id: str) -> str:
    if not BATCH_ID.fullmatch(batch_id):
        raise BatchNotFoundError(f"no batch {shown_id(batch_id)}", "batch_id")
    return batch_id


@router.post("/batches", summary="Create a batch (OpenAI Batch API)")
async def create_batch(body: CreateBatch, tenant: TenantDep, request: Request) -> dict[str, Any]:
    batches = runner(request)
    output_life_s = file_life_s(
        body.output_expires_after, batches.store.limits.ttl_s, "output_expires_after"
    )
    return await batches.create(
        tenant.name, body.input_file_id, body.endpoint, body.completion_window, body.metadata,
        output_life_s,
    )  # fmt: skip


@router.get("/batches", summary="List batches")
async def list_batches(
    tenant: TenantDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    return await runner(request).list_page(tenant.name, after, limit)  # reads only that page


@router.get("/batches/{batch_id}", summary="Retrieve a batch")
async def get_batch(batch_id: str, tenant: TenantDep, request: Request) -> dict[str, Any]:
    return await runner(request).get(tenant.name, _checked(batch_id))


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, tenant: TenantDep, request: Request) -> dict[str, Any]:
    return await runner(request).cancel(tenant.name, _checked(batch_id))
