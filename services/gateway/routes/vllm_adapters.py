"""``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``: vLLM's runtime LoRA routes.

As in vLLM, unload only stops serving an adapter: it leaves ``/v1/models``, requests naming it get
404, workers drop it and free its slots, but its weights stay in the store (an adapter uploaded by
multipart exists nowhere else).  Load serves it again: by name alone for an unloaded adapter,
or from ``lora_path`` (a directory under ``--adapters-root``, registered as
``POST /v1/adapters {"name", "path"}``; for an unloaded adapter it becomes its new version;
vLLM's ``load_inplace`` is ``replace``).  Deleting is ``DELETE /v1/adapters/{name}``.
Same tenant, validation, error messages and codes as the adapter routes, but vLLM's statuses:
200 with vLLM's plain-text message on success, 400 for every refusal (already loaded, path not
allowed, too large, not the owner), 404 for an adapter that is unknown or not loaded.  Without
an adapter store they answer 503.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterPathError,
    AdapterTooLargeError,
    StoreUnavailableError,
)
from loraplex.adapters.keys import adapter_id
from loraplex.adapters.registration.adapter_paths import upload_from_dir
from loraplex.adapters.registration.deps import AppState
from loraplex.adapters.registration.uploads import check_name
from loraplex.gateway.deps import TenantDep
from loraplex.gateway.errors import InvalidParamError, classify
from loraplex.tenants import Tenant

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
    lora_path: str | None = Field(default=None, min_length=1)  # None: serve an unloaded one again
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


@router.post(
    "/load_lora_adapter", summary="Serve an adapter: unloaded, or from a server path (vLLM)"
)
async def load_lora_adapter(
    body: LoadLoraAdapterRequest, tenant: TenantDep, state: StoreDep
) -> PlainTextResponse:
    name = check_name(body.lora_name)
    own = await state.store.get(adapter_id(tenant.name, name))
    try:
        if body.lora_path is None:
            if own is None:
                raise InvalidParamError(
                    f"lora_path is required: {name!r} is not an adapter of yours to load again",
                    "lora_path",
                )
            if not await state.registrar.serve_again(tenant, own):
                raise AdapterExistsError(f"adapter {name!r} is already loaded")
        else:
            # an unloaded adapter of that name gets the path's weights as its new version
            replace = body.load_inplace or (own is not None and not own.served)
            await _register_path(state, tenant, name, body.lora_path, replace)
    except tuple(_AS_400) as e:
        raise _as_vllm_error(e) from e
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def _register_path(
    state: AppState, tenant: Tenant, name: str, path: str, replace: bool
) -> None:
    limit = state.config.max_adapter_bytes
    async with state.registrar.upload_slot(tenant):  # 429 as on /v1/adapters
        upload = await upload_from_dir(
            state.adapters_root, name, path, limit, replace=replace,
            spool_dir=state.config.upload_dir,
        )  # fmt: skip
        await state.registrar.register(tenant, upload)


@router.post("/unload_lora_adapter", summary="Stop serving an adapter, keeping it (vLLM)")
async def unload_lora_adapter(
    body: UnloadLoraAdapterRequest, tenant: TenantDep, state: StoreDep
) -> PlainTextResponse:
    try:
        await state.registrar.unload(tenant, body.lora_name)
    except tuple(_AS_400) as e:
        raise _as_vllm_error(e) from e
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
