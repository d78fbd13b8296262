"""``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``: vLLM's runtime LoRA routes
as aliases of the adapter routes.

Load is ``POST /v1/adapters {"name", "path"}`` (a directory under ``--adapters-root``; vLLM's
``load_inplace`` is ``replace``); unload is ``DELETE /v1/adapters/{name}``.  Same tenant, same
validation, same error messages and codes, but vLLM's statuses: 200 with vLLM's plain-text
message on success, 400 for every refusal (already loaded, path not allowed, too large, not the
owner), 404 for an unknown adapter.  Without an adapter store they answer 503.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from loraplex.adapter_store.adapter_paths import upload_from_dir
from loraplex.adapter_store.deps import AppState
from loraplex.adapter_store.uploads import check_name
from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterPathError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.gateway.deps import TenantDep
from loraplex.gateway.errors import InvalidParamError, classify

router = APIRouter(prefix="/v1", tags=["adapters"])

# refusals answered with another status by /v1/adapters -> the vLLM param they are about
_AS_400: dict[type[Exception], str] = {
    AdapterExistsError: "lora_name",
    AdapterForbiddenError: "lora_name",
    AdapterPathError: "lora_path",
    AdapterTooLargeError: "lora_path",
}


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False  # replace an adapter of that name


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM's; ignored, adapters are named


def get_store_state(request: Request, tenant: TenantDep) -> AppState:
    """The adapter-store state the gateway runs (after auth); 503 without ``--redis-url``."""
    state = getattr(request.app.state, "loraplex", None)
    if state is None:
        raise StoreUnavailableError(
            "no adapter store is configured: start the gateway with --redis-url to manage adapters"
        )
    return state


StoreDep = Annotated[AppState, Depends(get_store_state)]


def _as_vllm_error(exc: Exception) -> InvalidParamError:
    """The same message and code as the adapter routes give, as a 400."""
    _, body = classify(exc)
    param = next(p for kind, p in _AS_400.items() if isinstance(exc, kind))
    return InvalidParamError(str(exc), param, body["error"]["code"])


@router.post("/load_lora_adapter", summary="Register an adapter from a server path (vLLM)")
async def load_lora_adapter(
    body: LoadLoraAdapterRequest, tenant: TenantDep, state: StoreDep
) -> PlainTextResponse:
    name = check_name(body.lora_name)
    limit = state.settings.max_adapter_bytes
    spool_dir = state.settings.upload_dir
    try:
        async with state.registrar.upload_slot(tenant):  # 429 as on /v1/adapters
            upload = await upload_from_dir(
                state.adapters_root, name, body.lora_path, limit, replace=body.load_inplace,
                spool_dir=spool_dir,
            )  # fmt: skip
            await state.registrar.register(tenant, upload)
    except tuple(_AS_400) as e:
        raise _as_vllm_error(e) from e
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/unload_lora_adapter", summary="Delete an adapter (vLLM)")
async def unload_lora_adapter(
    body: UnloadLoraAdapterRequest, tenant: TenantDep, state: StoreDep
) -> PlainTextResponse:
    try:
        await state.registrar.delete(tenant, body.lora_name)
    except tuple(_AS_400) as e:
        raise _as_vllm_error(e) from e
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
