"""The adapter-store's use cases: validate, store, announce.  No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loraplex.adapters.errors import AdapterForbiddenError, UploadLimitError
from loraplex.adapters.info import AdapterInfo, Registered
from loraplex.adapters.keys import adapter_id
from loraplex.adapters.quota import AdapterQuota
from loraplex.adapters.registration.events import EventPublisher
from loraplex.adapters.registration.uploads import AdapterUpload
from loraplex.adapters.store import AdapterStore
from loraplex.errors import AdapterNotFoundError
from loraplex.lora.adapter_check import check_adapter_file
from loraplex.lora.names import NAME_PATTERN
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
        quota: AdapterQuota | None = None,  # every tenant's, unless its entry sets its own
    ) -> None:
        self.store = store
        self.model = model
        self.max_rank = max_rank
        self.events = events
        self.max_abs_weight = max_abs_weight
        self.uploads_per_tenant = uploads_per_tenant
        self.quota = quota or AdapterQuota()
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

    def quota_of(self, tenant: Tenant) -> AdapterQuota:
        """``tenant``'s limits: its entry's own (tenants file), else the deployment's."""
        own = AdapterQuota.of(tenant.max_adapters, tenant.max_adapter_storage_mb)
        return AdapterQuota(
            self.quota.max_adapters if tenant.max_adapters is None else own.max_adapters,
            self.quota.max_bytes if tenant.max_adapter_storage_mb is None else own.max_bytes,
        )

    async def register(
        self, tenant: Tenant, upload: AdapterUpload, *, counted: bool = True
    ) -> Registered:
        """Validate against the base model (before storing anything), store, publish.  The
        upload's spool file is deleted whatever happens.  ``counted=False`` (the operator's
        ``--lora-modules``): not held to the tenant's quota."""
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
                    source=upload.source,
                    quota=self.quota_of(tenant) if counted else None,
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

    async def own(self, tenant: Tenant, name: str) -> AdapterInfo:
        """``tenant``'s own adapter ``name``; another tenant's public one of that name is 403,
        anything else 404 (as ``delete_for``: the answer never depends on private adapters)."""
        info = await self.store.get(adapter_id(tenant.name, name)) if _named(name) else None
        if info is not None:
            return info
        await self.store.get_for(tenant.name, name)  # 404 unless a public one has that name
        raise AdapterForbiddenError(
            f"adapter {name!r} belongs to another tenant; only its owner can load or unload it"
        )

    async def unload(self, tenant: Tenant, name: str) -> AdapterInfo:
        """vLLM's unload: stop serving ``tenant``'s adapter (workers drop it and free its slots),
        keeping its weights; 404 when it is not being served."""
        info = await self.own(tenant, name)
        before = await self.store.set_served(info.id, False)
        if before is None or not before.served:
            raise AdapterNotFoundError(
                f"adapter {name!r} is not loaded (it is stored: load it again by name, "
                f"or delete it with DELETE /v1/adapters/{name})"
                if before is not None
                else f"adapter {name!r} not found"
            )
        log.info("adapter %s unloaded by tenant %s (v%d kept)", name, tenant.name, info.version)
        await self.events.publish(_event("unloaded", before))
        return before

    async def serve_again(self, tenant: Tenant, info: AdapterInfo) -> bool:
        """Serve ``tenant``'s unloaded adapter ``info`` again, from its stored weights; False
        when it was already served (vLLM: already loaded)."""
        before = await self.store.set_served(info.id, True)
        if before is None:
            raise AdapterNotFoundError(f"adapter {info.name!r} not found")
        if before.served:
            return False
        log.info(
            "adapter %s loaded again by tenant %s (v%d)", info.name, tenant.name, before.version
        )
        await self.events.publish(_event("loaded", before))
        return True

    async def delete(self, tenant: Tenant, name: str) -> AdapterInfo:
        info = await self.store.delete_for(tenant.name, name)
        log.info("adapter %s deleted by tenant %s (v%d)", name, tenant.name, info.version)
        await self.events.publish(_event("deleted", info))
        return info


def _event(kind: str, info: AdapterInfo) -> AdapterEvent:
    return AdapterEvent(
        kind=kind, name=info.name, owner=info.owner, sha256=info.sha256, version=info.version
    )


def _named(name: str) -> bool:
    return bool(NAME_PATTERN.match(name or ""))
