"""``BatchLimits``: how much of the Files and Batch APIs one tenant may use (frozen config)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex import env
from loraplex.cli_flags import Flag, flag

MIB = 1024 * 1024
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
)  # what a batch line may call
COMPLETION_WINDOW = "24h"  # the only window OpenAI accepts
COMPLETION_WINDOW_S = 24 * 3600


@dataclass(frozen=True)
class BatchLimits:
    file_max_bytes: int = 64 * MIB  # one uploaded file (OpenAI: 200 MB); then 413
    tenant_bytes: int = 512 * MIB  # a tenant's stored files, outputs included; then 403
    files_per_tenant: int = 200  # a tenant's stored files; then 403
    max_lines: int = 10_000  # requests in one batch (OpenAI: 50,000); more: the batch fails
    active_per_tenant: int = 4  # a tenant's batches not finished yet; then 429
    concurrency: int = 16  # requests of one batch in flight at once
    result_max_bytes: int = 32 * MIB  # one line's stored answer; larger: that line's error
    batches_kept: int = 2000  # a tenant's stored batches, any status; then 429
    ttl_s: int = 7 * 24 * 3600  # files and batches are forgotten after this

    def __post_init__(self) -> None:
        if min(self.file_max_bytes, self.tenant_bytes, self.files_per_tenant) < 1:
            raise ValueError("batch file limits must be positive")
        if min(self.max_lines, self.active_per_tenant, self.concurrency, self.batches_kept) < 1:
            raise ValueError("batch limits must be positive")
        if self.ttl_s < COMPLETION_WINDOW_S:
            raise ValueError("batch files must be kept at least 24 h (the completion window)")
        if self.result_max_bytes < 1:
            raise ValueError("a batch line's answer must be allowed some bytes")
        if self.file_max_bytes > self.tenant_bytes:
            raise ValueError("one file may not be larger than a tenant's whole file budget")

    @classmethod
    def from_env(cls, **flags: object) -> BatchLimits:
        """Defaults from the environment registry; ``flags`` (``flags()``'s dests) not None win."""
        given = {k: v for k, v in flags.items() if v is not None}
        mib = given.pop("batch_file_max_mb", env.BATCH_FILE_MAX_MB.get())
        tenant_mib = given.pop("batch_files_tenant_mb", env.BATCH_FILES_TENANT_MB.get())
        result_mib = given.pop("batch_result_max_mb", env.BATCH_RESULT_MAX_MB.get())
        return cls(
            file_max_bytes=int(float(mib) * MIB),  # type: ignore[arg-type]
            tenant_bytes=int(float(tenant_mib) * MIB),  # type: ignore[arg-type]
            files_per_tenant=given.pop("batch_files_per_tenant", env.BATCH_FILES_PER_TENANT.get()),
            max_lines=given.pop("batch_max_lines", env.BATCH_MAX_LINES.get()),
            active_per_tenant=given.pop("batches_per_tenant", env.BATCHES_PER_TENANT.get()),
            concurrency=given.pop("batch_concurrency", env.BATCH_CONCURRENCY.get()),
            result_max_bytes=int(float(result_mib) * MIB),  # type: ignore[arg-type]
            batches_kept=given.pop("batches_kept_per_tenant", env.BATCHES_KEPT_PER_TENANT.get()),
        )  # type: ignore[arg-type]


def flags() -> tuple[Flag, ...]:
    """The gateway's Batch API flags; unset ones fall back to ``BatchLimits.from_env``."""
    return (
        flag("--batch-file-max-mb", type=float, default=None,
             help=f"largest file uploaded to /v1/files, MiB (default 64) [{env.BATCH_FILE_MAX_MB.name}]"),
        flag("--batch-files-tenant-mb", type=float, default=None,
             help="MiB of files one tenant may keep, batch outputs included; 403 beyond "
             f"(default 512) [{env.BATCH_FILES_TENANT_MB.name}]"),
        flag("--batch-files-per-tenant", type=int, default=None,
             help=f"files one tenant may keep (default 200) [{env.BATCH_FILES_PER_TENANT.name}]"),
        flag("--batch-max-lines", type=int, default=None,
             help=f"requests in one batch (default 10000) [{env.BATCH_MAX_LINES.name}]"),
        flag("--batches-per-tenant", type=int, default=None,
             help=f"batches one tenant may run at once, 429 beyond (default 4) [{env.BATCHES_PER_TENANT.name}]"),
        flag("--batch-concurrency", type=int, default=None,
             help=f"requests of one batch in flight at once (default 16) [{env.BATCH_CONCURRENCY.name}]"),
        flag("--batch-result-max-mb", type=float, default=None,
             help="largest answer one batch line may keep, MiB; a larger one is that line's "
             f"error (default 32) [{env.BATCH_RESULT_MAX_MB.name}]"),
        flag("--batches-kept-per-tenant", type=int, default=None,
             help="batches one tenant may keep (any status, until they expire), 429 beyond "
             f"(default 2000) [{env.BATCHES_KEPT_PER_TENANT.name}]"),
    )  # fmt: skip
