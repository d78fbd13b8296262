"""``GET /v1/models``: the base model and the adapters the caller may use (OpenAI list)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from loraplex.gateway.deps import ServiceDep, TenantDep
from loraplex.gateway.errors import ModelNotFoundError

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", summary="List models")
async def list_models(tenant: TenantDep, service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": await service.list_models(tenant.name)}


@router.get("/models/{model:path}", summary="Retrieve a model")
async def get_model(model: str, tenant: TenantDep, service: ServiceDep) -> dict[str, Any]:
    for card in await service.list_models(tenant.name):
        if card["id"] == model:
            return card
    raise ModelNotFoundError(f"The model {model!r} does not exist or you do not have access to it.")
