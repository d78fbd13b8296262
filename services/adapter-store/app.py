"""``create_app(settings)``: the adapter-store FastAPI app (register/list/get/delete adapters)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from loraplex.adapter_store.deps import AppState
from loraplex.adapter_store.events import EventPublisher
from loraplex.adapter_store.registrar import Registrar
from loraplex.adapter_store.routes import health, router
from loraplex.adapter_store.settings import Settings
from loraplex.adapter_store.spool import sweep_orphans
from loraplex.adapters.migrate import migrate_in_background
from loraplex.adapters.store import AdapterStore
from loraplex.http_errors import install_error_handlers
from loraplex.model.config import ModelConfig
from loraplex.tenants import load_tenants

log = logging.getLogger(__name__)


def _adapters_root(path: str | None) -> Path | None:
    if path is None:
        return None
    root = Path(os.path.realpath(path))
    if not root.is_dir():
        raise ValueError(f"--adapters-root {path!r} is not a directory")
    return root


def create_app(settings: Settings) -> FastAPI:
    """Builds the app; reads the model config, tenants and adapters root now (fail fast).
    Redis and NATS connections are made per app run, in the lifespan."""
    model = ModelConfig.from_dir(settings.model_dir)
    tenants = load_tenants(settings.tenants_file)
    root = _adapters_root(settings.adapters_root)
    if settings.upload_dir is not None and not os.path.isdir(settings.upload_dir):
        raise ValueError(f"--upload-dir {settings.upload_dir!r} is not a directory")
    if swept := sweep_orphans(settings.upload_dir):
        log.info("removed %d upload file(s) left by stopped processes", swept)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = AdapterStore.from_url(
            settings.redis_url, prefix=settings.redis_prefix, max_bytes=settings.max_adapter_bytes
        )
        events = EventPublisher(settings.nats_url)
        events.start()
        registrar = Registrar(
            store,
            model,
            settings.max_lora_rank,
            events,
            max_abs_weight=settings.max_adapter_weight,
            uploads_per_tenant=settings.uploads_per_tenant,
        )
        migration = asyncio.create_task(migrate_in_background(store), name="adapter-migration")
        app.state.loraplex = AppState(settings, tenants, store, events, registrar, root)
        mode = "open mode" if tenants.open_mode else f"{len(tenants.tenants)} tenants"
        log.info("adapter-store ready on %s:%d (%s)", settings.host, settings.port, mode)
        try:
            yield
        finally:
            migration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await migration
            await events.close()
            await store.close()

    app = FastAPI(title="loraplex adapter-store", version="1", lifespan=lifespan)
    app.include_router(router)
    app.include_router(health)
    install_error_handlers(app)
    return app
