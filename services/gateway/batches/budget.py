"""What a tenant may hold in the Files and Batch APIs, and the errors past it (both stores
check the same way; ``store.py`` says what is bounded).  Plain Python."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from loraplex.gateway.batches.errors import BatchLimitError, FilesQuotaError, ResultTooLargeError
from loraplex.gateway.batches.limits import MIB, BatchLimits

Record = dict[str, Any]


def quota_error(limits: BatchLimits, count: int, total: int, size: int) -> FilesQuotaError | None:
    if count + 1 > limits.files_per_tenant:
        return FilesQuotaError(
            f"you already have {count} files, the most one tenant may keep is "
            f"{limits.files_per_tenant}; delete some first"
        )
    if total + size > limits.tenant_bytes:
        return FilesQuotaError(
            f"your files would take {(total + size) / MIB:.1f} MiB, the most one tenant may keep "
            f"is {limits.tenant_bytes / MIB:.1f} MiB; delete some first"
        )
    return None


@dataclass(frozen=True)
class Usage:
    """What a tenant holds: files, their bytes plus its running batches' answers, batches."""

    files: int
    bytes: int
    batches: int


async def encode_result(ok: bool, line: Record, limits: BatchLimits, forced: bool) -> bytes:
    """``1``/``0`` (answered / failed) + the line as it goes in the output file; an answer over
    ``result_max_bytes`` is a ``ResultTooLargeError`` unless ``forced`` (a line's own small
    error, kept whatever the cap).  (Encoded off the event loop: an answer may be tens of MiB.)"""
    text = await asyncio.to_thread(json.dumps, line, ensure_ascii=False)
    raw = (b"1" if ok else b"0") + text.encode()
    if not forced and len(raw) - 1 > limits.result_max_bytes:
        raise ResultTooLargeError(
            f"the answer takes {(len(raw) - 1) / MIB:.1f} MiB, the most a batch line may keep "
            f"is {limits.result_max_bytes / MIB:.1f} MiB",
            413,
        )
    return raw


def budget_error(limits: BatchLimits, used: int, size: int) -> ResultTooLargeError:
    return ResultTooLargeError(
        f"the answer ({size / MIB:.2f} MiB) would take your files to "
        f"{(used + size) / MIB:.1f} MiB, the most one tenant may keep is "
        f"{limits.tenant_bytes / MIB:.1f} MiB; delete some files",
        403,
    )


def too_many_kept(limits: BatchLimits) -> BatchLimitError:
    return BatchLimitError(
        f"you already keep {limits.batches_kept} batches, the most one tenant may keep; "
        "they are forgotten 7 days after they were created"
    )


def too_many_batches(limits: BatchLimits) -> str:
    return (
        f"you already run {limits.active_per_tenant} batches, the most one tenant may run at "
        "once; wait for one to end, or cancel one"
    )
