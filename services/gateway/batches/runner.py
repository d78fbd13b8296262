"""OpenAI's Batch API in the gateway: ``BatchRunner`` creates, runs, cancels and takes over
batches (SGLang serves the same API; ``vllm run-batch`` reads the same files).

1. A tenant uploads a JSONL file (``POST /v1/files``, purpose ``batch``), then creates a batch
   on it (``POST /v1/batches``).  The file is checked at once (``lines.py``): a bad one makes a
   ``failed`` batch listing the problems; a good one makes an ``in_progress`` batch, counted
   against the tenant's ``active_per_tenant`` (429 beyond) and leased to this gateway.
2. The gateway runs it (``run.py``): each line goes through the route's own code path, queued
   under the batch's tenant, so the scheduler's fairness treats a batch like that tenant's other
   requests: a 10,000-line batch cannot starve another tenant, it only uses its owner's share.
3. Any replica answers ``GET /v1/batches/{id}`` (progress in ``request_counts``) and cancels it
   (``POST .../cancel``: ``cancelling``; the running gateway sees it within ``run.WATCH_S``).
4. At the end the results are written as the output and error files (``GET /v1/files/{id}/content``).

**A gateway that dies** leaves its batches' leases to expire (``LEASE_S``); every gateway looks
for such orphans every ``SWEEP_S`` and the first to claim one goes on from its first unanswered
line.  Lines the dead gateway had in flight run again; the first stored answer of a line wins.
With the memory store (a gateway without Redis) there is no other gateway to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from loraplex.gateway.batches.budget import quota_error, too_many_kept
from loraplex.gateway.batches.errors import BatchNotFoundError, FilesQuotaError
from loraplex.gateway.batches.execute import LineExecutor
from loraplex.gateway.batches.limits import COMPLETION_WINDOW, COMPLETION_WINDOW_S, ENDPOINTS
from loraplex.gateway.batches.lines import BatchInputError, check_input
from loraplex.gateway.batches.objects import (
    FILE_ID,
    MAX_METADATA,
    TERMINAL,
    batch_object,
    failed,
    new_batch_id,
)
from loraplex.gateway.batches.run import BatchRun
from loraplex.gateway.batches.store import BatchStore, Record
from loraplex.gateway.errors import InvalidParamError, shown_id
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)

LEASE_S = 15.0  # a dead gateway's batches wait at most this (+ SWEEP_S) for a successor
SWEEP_S = 5.0
STOP_S = 5.0


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        execute: LineExecutor,
        gateway_id: str,
        clock: Callable[[], float] = time.time,
        lease_s: float | None = None,  # None: LEASE_S, SWEEP_S (read now: tests shorten them)
        sweep_s: float | None = None,
    ) -> None:
        self.store = store
        self.execute = execute
        self.gateway_id = gateway_id
        self.clock = clock
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self.sweep_s = SWEEP_S if sweep_s is None else sweep_s
        self._runs: dict[tuple[str, str], asyncio.Task[None]] = {}
        # lines completed / failed / retried, batches taken_over (the gateway's metrics)
        self.counts: Counter[str] = Counter()
        self._sweeper: asyncio.Task[None] | None = None

    def stats(self) -> tuple[int, Counter[str]]:
        """(batches running here, counts): what ``/metrics`` shows."""
        return len(self._runs), self.counts

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="batch-sweeper")

    async def stop(self) -> None:
        """Stop every run here (their leases expire, and another gateway goes on with them);
        a shutdown never waits more than ``STOP_S`` for them."""
        tasks = [t for t in (self._sweeper, *self._runs.values()) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_S)
            for t in stuck:
                log.warning("%s did not stop within %.0f s; left behind", t.get_name(), STOP_S)

    async def create(
        self,
        tenant: str,
        input_file_id: str,
        endpoint: str,
        window: str,
        metadata: dict[str, Any] | None,
        output_life_s: int | None = None,
    ) -> Record:
        """A new batch (``failed`` at once when its input file is refused); its output and
        error files will live ``output_life_s`` (the store's ``ttl_s`` when None)."""
        if endpoint not in ENDPOINTS:
            raise InvalidParamError(
                f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}", "endpoint"
            )
        if window != COMPLETION_WINDOW:
            raise InvalidParamError(
                f"completion_window must be {COMPLETION_WINDOW!r}", "completion_window"
            )
        _check_metadata(metadata)
        meta = (
            await self.store.get_file(tenant, input_file_id)
            if FILE_ID.fullmatch(input_file_id)
            else None
        )
        if meta is None:
            raise BatchNotFoundError(f"no file {shown_id(input_file_id)}", "input_file_id")
        if meta["purpose"] != "batch":
            raise InvalidParamError("the input file's purpose must be 'batch'", "input_file_id")
        await self._check_room(tenant)
        now = int(self.clock())
        batch = batch_object(
            new_batch_id(), endpoint, input_file_id, window, metadata, now,
            now + COMPLETION_WINDOW_S,
        )  # fmt: skip
        if output_life_s is not None:
            batch["output_expires_after"] = {"anchor": "created_at", "seconds": output_life_s}
        content = await self.store.file_content(tenant, input_file_id) or b""
        try:
            total = await asyncio.to_thread(
                check_input, content, endpoint, self.store.limits.max_lines
            )
        except BatchInputError as e:
            batch = failed(batch, e.errors, now)
            await self.store.put_batch(tenant, batch)
            return batch
        batch["request_counts"]["total"] = total
        await self.store.activate(tenant, batch["id"], self.gateway_id, self.lease_s)
        try:
            await self.store.put_batch(tenant, batch)
        except BaseException:  # too many kept (another create won the last place), store away
            await self.store.deactivate(tenant, batch["id"])
            raise
        self._spawn(tenant, batch["id"])
        log.info("batch %s of %s: %d requests to %s", batch["id"], tenant, total, endpoint)
        return batch

    async def list_page(self, tenant: str, after: str | None, limit: int) -> Record:
        """OpenAI's list object: ``limit`` batches, newest first, after the one ``after`` names;
        only those are read (a tenant may keep thousands)."""
        data, more = await self.store.page_batches(tenant, after, limit)
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def get(self, tenant: str, batch_id: str) -> Record:
        batch = await self.store.get_batch(tenant, batch_id)
        if batch is None:
            raise BatchNotFoundError(f"no batch {shown_id(batch_id)}", "batch_id")
        return batch

    async def cancel(self, tenant: str, batch_id: str) -> Record:
        """``cancelling`` now; the gateway running it ends it ``cancelled`` with what was
        answered.  A batch that already ended is a 400."""
        now = int(self.clock())

        def change(b: Record) -> Record | None:
            if b["status"] != "in_progress":
                return None
            return {**b, "status": "cancelling", "cancelling_at": now}

        batch = await self.store.update_batch(tenant, batch_id, change)
        if batch is None:
            raise BatchNotFoundError(f"no batch {shown_id(batch_id)}", "batch_id")
        if batch["status"] in TERMINAL:
            raise InvalidParamError(
                f"the batch is {batch['status']} already; it cannot be cancelled"
            )
        return batch

    async def _check_room(self, tenant: str) -> None:
        """A tenant whose files and answers took it past its file budget, or that keeps as many
        batches as it may, starts nothing more (before its input file is read)."""
        limits, used = self.store.limits, await self.store.usage(tenant)
        if used.batches >= limits.batches_kept:
            raise too_many_kept(limits)
        if used.files > limits.files_per_tenant or used.bytes > limits.tenant_bytes:
            raise quota_error(limits, used.files, used.bytes, 0) or FilesQuotaError(
                "your files take all of your budget; delete some first"
            )

    def _spawn(self, tenant: str, batch_id: str) -> None:
        key = (tenant, batch_id)
        run = BatchRun(
            self.store, self.execute, tenant, batch_id, self.gateway_id, self.lease_s, self.clock,
            self.counts,
        )  # fmt: skip
        task = asyncio.create_task(self._guarded(run), name=f"batch-{batch_id}")
        self._runs[key] = task
        task.add_done_callback(lambda _: self._runs.pop(key, None))

    async def _guarded(self, run: BatchRun) -> None:
        try:
            await run.go()
        except Exception:  # its lease expires; a sweep (here or elsewhere) tries again
            if cancel_requested():
                raise asyncio.CancelledError from None
            log.exception("batch %s stopped on an error; it will be taken up again", run.batch_id)

    async def _sweep_forever(self) -> None:
        while not cancel_requested():  # a cancel a Redis call swallowed ends it too
            await asyncio.sleep(self.sweep_s)
            with contextlib.suppress(Exception):  # the store away: the next sweep
                await self.sweep()
        raise asyncio.CancelledError

    async def sweep(self) -> list[tuple[str, str]]:
        """Take over the batches nobody runs; returns those taken."""
        taken = []
        for tenant, batch_id in await self.store.orphans():
            if (tenant, batch_id) in self._runs:
                continue
            if await self.store.claim(tenant, batch_id, self.gateway_id, self.lease_s):
                log.info(
                    "batch %s of %s: taken over by gateway %s", batch_id, tenant, self.gateway_id
                )
                self._spawn(tenant, batch_id)
                self.counts["taken_over"] += 1
                taken.append((tenant, batch_id))
        return taken


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    ok = isinstance(metadata, dict) and len(metadata) <= MAX_METADATA
    ok = ok and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in metadata.items()  # type: ignore[union-attr]
    )
    if not ok:
        raise InvalidParamError(
            f"metadata must be at most {MAX_METADATA} string pairs, keys up to 64 characters "
            "and values up to 512",
            "metadata",
        )
