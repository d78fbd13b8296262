"""The adapter-store's use cases: validate, store, announce.  No HTTP here."""

from __future__ import annotations

import asyncio
import logging

from loraplex.adapter_store.events import EventPublisher
from loraplex.adapter_store.uploads import AdapterUpload
from loraplex.adapters.info import AdapterInfo, Registered
from loraplex.adapters.store import AdapterStore
from loraplex.lora.adapter import parse_adapter
from loraplex.model.config import ModelConfig
from loraplex.protocol import AdapterEvent
from loraplex.tenants import Tenant

log = logging.getLogger(__name__)


class Registrar:
    def __init__(
        self, store: AdapterStore, model: ModelConfig, max_rank: int, events: EventPublisher
    ) -> None:
        self.store = store
        self.model = model
        self.max_rank = max_rank
        self.events = events

    async def register(self, tenant: Tenant, upload: AdapterUpload) -> Registered:
        """Validate against the base model (before storing anything), store, publish."""
        await self.store.check_can_register(tenant.name, upload.name, upload.replace)
        adapter = await asyncio.to_thread(
            parse_adapter,
            upload.name,
            upload.config_bytes,
            upload.weights_bytes,
            self.model,
            self.max_rank,
        )
        reg = await self.store.register(
            upload.name,
            tenant.name,
            upload.config_bytes,
            upload.weights_bytes,
            rank=adapter.rank,
            alpha=adapter.alpha,
            targets=adapter.targets,
            visibility=upload.visibility,
            replace=upload.replace,
        )
        kind = "replaced" if reg.replaced is not None else "created"
        log.info(
            "adapter %s %s by tenant %s (v%d, rank %d, %d bytes)",
            reg.info.name, kind, tenant.name, reg.info.version, reg.info.rank, reg.info.size_bytes,
        )  # fmt: skip
        await self.events.publish(_event(kind, reg.info))
        return reg

    async def delete(self, tenant: Tenant, name: str) -> AdapterInfo:
        info = await self.store.delete_for(tenant.name, name)
        log.info("adapter %s deleted by tenant %s (v%d)", name, tenant.name, info.version)
        await self.events.publish(_event("deleted", info))
        return info


def _event(kind: str, info: AdapterInfo) -> AdapterEvent:
    return AdapterEvent(
        kind=kind, name=info.name, owner=info.owner, sha256=info.sha256, version=info.version
    )
