"""The adapter-store's use cases: validate, store, announce.  No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loraplex.adapter_store.events import EventPublisher
from loraplex.adapter_store.uploads import AdapterUpload
from loraplex.adapters.errors import UploadLimitError
from loraplex.adapters.info import AdapterInfo, Registered
from loraplex.adapters.store import AdapterStore
from loraplex.lora.adapter import check_adapter_file
from loraplex.model.config import ModelConfig
from loraplex.protocol import AdapterEvent
from loraplex.tenants import Tenant

log = logging.getLogger(__name__)


class Registrar:
    def __init__(
        self,
        store: AdapterStore,
        model: ModelConfig,
        max_rank: int,
        events: EventPublisher,
        *,
        max_abs_weight: float | None = None,  # None: LORAPLEX_ADAPTER_MAX_ABS_WEIGHT
        uploads_per_tenant: int = 2,
    ) -> None:
        self.store = store
        self.model = model
        self.max_rank = max_rank
        self.events = events
        self.max_abs_weight = max_abs_weight
        self.uploads_per_tenant = uploads_per_tenant
        self._uploading: Counter[str] = Counter()

    @asynccontextmanager
    async def upload_slot(self, tenant: Tenant) -> AsyncIterator[None]:
        """One of the tenant's concurrent uploads (in this process), or UploadLimitError (429)
        before any of the body is read: one tenant cannot tie up the server's disk and CPU."""
        if self._uploading[tenant.name] >= self.uploads_per_tenant:
            raise UploadLimitError(
                f"tenant {tenant.name!r} already has {self.uploads_per_tenant} adapter uploads "
                "in progress; retry when one has finished"
            )
        self._uploading[tenant.name] += 1
        try:
            yield
        finally:
            self._uploading[tenant.name] -= 1
            if not self._uploading[tenant.name]:
                del self._uploading[tenant.name]

    async def register(self, tenant: Tenant, upload: AdapterUpload) -> Registered:
        """Validate against the base model (before storing anything), store, publish.  The
        upload's spool file is deleted whatever happens."""
        try:
            await self.store.check_can_register(
                tenant.name, upload.name, upload.replace, upload.visibility
            )
            summary = await asyncio.to_thread(
                check_adapter_file,
                upload.name,
                upload.config_bytes,
                upload.weights.path,
                self.model,
                self.max_rank,
                self.max_abs_weight,
            )
            with open(upload.weights.path, "rb") as weights:  # streamed into Redis in chunks
                reg = await self.store.register(
                    upload.name,
                    tenant.name,
                    upload.config_bytes,
                    weights,
                    rank=summary.rank,
                    alpha=summary.alpha,
                    targets=summary.targets,
                    visibility=upload.visibility,
                    replace=upload.replace,
                )
        finally:
            upload.discard()
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
