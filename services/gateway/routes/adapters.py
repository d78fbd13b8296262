"""``POST/GET/DELETE /v1/adapters...`` through the gateway, with the caller's tenant.

The routes are the adapter-store service's own (``loraplex.adapters.registration.routes.router``): same
validation, same dependencies (they read ``app.state.loraplex``, which the gateway's lifespan fills
by running the adapter-store app's lifespan).  Without ``--redis-url`` they answer 503.
"""

from __future__ import annotations

from fastapi import APIRouter

from loraplex.adapters.errors import StoreUnavailableError
from loraplex.adapters.registration.routes import router as store_router
from loraplex.gateway.deps import TenantDep

disabled = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@disabled.api_route(
    "{rest:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False
)
async def no_adapter_store(rest: str, tenant: TenantDep) -> None:
    raise StoreUnavailableError(
        "no adapter store is configured: start the gateway with --redis-url to manage adapters"
    )


def adapter_router(enabled: bool) -> APIRouter:
    return store_router if enabled else disabled
