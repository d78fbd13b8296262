"""Building registration: what is checked at start (model config, tenants, adapters root,
upload dir: fail fast), and what runs per app run (Redis store, NATS events, registrar, the
background key migration), as one ``AppState`` for the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.migrate import migrate_in_background
from loraplex.adapters.registration.config import RegistrationConfig
from loraplex.adapters.registration.deps import AppState
from loraplex.adapters.registration.events import EventPublisher
from loraplex.adapters.registration.registrar import Registrar
from loraplex.adapters.registration.spool import sweep_orphans
from loraplex.adapters.store import AdapterStore
from loraplex.model.config import ModelConfig
from loraplex.tenants import Tenants
from loraplex.tenants_watch import LiveTenants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """Registration checked and ready to run; ``running()`` opens its connections."""

    config: RegistrationConfig
    model: ModelConfig
    tenants: LiveTenants
    adapters_root: Path | None  # realpath of --adapters-root

    @classmethod
    def prepare(
        cls, config: RegistrationConfig, tenants: LiveTenants | Tenants | None = None
    ) -> Registration:
        """Reads the model config, tenants (unless the caller already has them) and adapters
        root now; removes spooled uploads that stopped processes left behind."""
        model = ModelConfig.from_dir(config.model_dir)
        if tenants is None:
            tenants = LiveTenants(config.tenants_file)  # re-read when the file changes
        elif isinstance(tenants, Tenants):
            tenants = LiveTenants.fixed(tenants)
        root = _adapters_root(config.adapters_root)
        if config.upload_dir is not None and not os.path.isdir(config.upload_dir):
            raise ValueError(f"--upload-dir {config.upload_dir!r} is not a directory")
        if swept := sweep_orphans(config.upload_dir):
            log.info("removed %d upload file(s) left by stopped processes", swept)
        return cls(config, model, tenants, root)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AppState]:
        config = self.config
        store = AdapterStore.from_url(
            config.redis_url, prefix=config.redis_prefix, max_bytes=config.max_adapter_bytes
        )
        events = EventPublisher(config.nats_url)
        events.start()
        registrar = Registrar(
            store,
            self.model,
            config.max_lora_rank,
            events,
            max_abs_weight=config.max_adapter_weight,
            uploads_per_tenant=config.uploads_per_tenant,
            quota=config.quota,
        )
        migration = asyncio.create_task(migrate_in_background(store), name="adapter-migration")
        try:
            yield AppState(config, self.tenants, store, events, registrar, self.adapters_root)
        finally:
            migration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await migration
            await events.close()
            await store.close()


def _adapters_root(path: str | None) -> Path | None:
    if path is None:
        return None
    root = Path(os.path.realpath(path))
    if not root.is_dir():
        raise ValueError(f"--adapters-root {path!r} is not a directory")
    return root
