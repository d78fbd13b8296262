"""``RegistrationConfig``: what adapter registration needs, wherever it runs (the adapter-store
service, or the gateway's embedded routes); each service adds its own listener settings."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex import env
from loraplex.adapters.quota import AdapterQuota


@dataclass(frozen=True)
class RegistrationConfig:
    model_dir: str  # base model directory: adapters are validated against its shapes
    redis_url: str
    nats_url: str = ""  # empty: publish no events
    adapters_root: str | None = None  # JSON path registrations only below it; None: disabled
    max_lora_rank: int = 64
    max_adapter_mb: float = 512.0
    max_adapter_weight: float = 1000.0  # largest |w| of A and scaled B (docs/architecture.md)
    uploads_per_tenant: int = 2  # concurrent uploads per tenant in this process; then 429
    max_adapters_per_tenant: int = 256  # stored adapters per tenant (0: no limit); then 403
    adapter_storage_per_tenant_mb: float = 8192.0  # their MiB per tenant (0: no limit)
    upload_dir: str | None = None  # where uploads are spooled; None: the system temp dir
    tenants_file: str | None = None  # None: open mode (one tenant, no API keys)
    redis_prefix: str = "loraplex"

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise ValueError("a base model directory is required (--model or LORAPLEX_MODEL)")
        if not self.redis_url:
            raise ValueError("a Redis URL is required (--redis-url or LORAPLEX_REDIS_URL)")
        if self.max_lora_rank < 1:
            raise ValueError("--max-lora-rank must be positive")
        if not self.max_adapter_mb > 0:
            raise ValueError("--max-adapter-mb must be positive")
        if not self.max_adapter_weight > 0:
            raise ValueError("--max-adapter-weight must be positive")
        if self.uploads_per_tenant < 1:
            raise ValueError("--uploads-per-tenant must be at least 1")
        if self.max_adapters_per_tenant < 0:
            raise ValueError("--max-adapters-per-tenant must be >= 0 (0: no limit)")
        if not 0 <= self.adapter_storage_per_tenant_mb < float("inf"):
            raise ValueError("--adapter-storage-per-tenant-mb must be >= 0 (0: no limit)")

    @property
    def max_adapter_bytes(self) -> int:
        return int(self.max_adapter_mb * 1024 * 1024)

    @property
    def quota(self) -> AdapterQuota:
        """Every tenant's adapter quota, unless its tenants-file entry sets its own."""
        return AdapterQuota.of(self.max_adapters_per_tenant, self.adapter_storage_per_tenant_mb)

    @classmethod
    def from_env(cls, **overrides: object) -> RegistrationConfig:
        """Defaults from the environment registry; ``overrides`` (flags) that are not None win."""
        base: dict[str, object] = {
            "model_dir": env.MODEL_DIR.get(),
            "redis_url": env.REDIS_URL.get(),
            "nats_url": env.NATS_URL.get(),
            "adapters_root": env.ADAPTERS_ROOT.get() or None,
            "max_lora_rank": env.MAX_LORA_RANK.get(),
            "max_adapter_mb": env.MAX_ADAPTER_MB.get(),
            "max_adapter_weight": env.ADAPTER_MAX_ABS_WEIGHT.get(),
            "uploads_per_tenant": env.UPLOADS_PER_TENANT.get(),
            "max_adapters_per_tenant": env.MAX_ADAPTERS_PER_TENANT.get(),
            "adapter_storage_per_tenant_mb": env.ADAPTER_STORAGE_PER_TENANT_MB.get(),
            "upload_dir": env.UPLOAD_DIR.get() or None,
            "tenants_file": env.TENANTS_FILE.get() or None,
            "redis_prefix": env.REDIS_PREFIX.get(),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        for optional in ("adapters_root", "tenants_file", "upload_dir"):
            base[optional] = base[optional] or None
        return cls(**base)  # type: ignore[arg-type]
