"""``create_app(settings)``: the adapter-store FastAPI app (register/list/get/delete adapters);
the registration itself is the library's (``loraplex.adapters.registration``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from loraplex.adapter_store.settings import Settings
from loraplex.adapters.registration.lifecycle import Registration
from loraplex.adapters.registration.routes import health, router
from loraplex.http_errors import install_error_handlers

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Builds the app; reads the model config, tenants and adapters root now (fail fast).
    Redis and NATS connections are made per app run, in the lifespan."""
    registration = Registration.prepare(settings.registration)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with registration.running() as state, registration.tenants.watching() as tenants:
            app.state.loraplex = state
            mode = "open mode" if tenants.open_mode else f"{len(tenants.current.tenants)} tenants"
            log.info("adapter-store ready on %s:%d (%s)", settings.host, settings.port, mode)
            yield

    app = FastAPI(title="loraplex adapter-store", version="1", lifespan=lifespan)
    app.include_router(router)
    app.include_router(health)
    install_error_handlers(app)
    return app
