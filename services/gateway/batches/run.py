"""One run of one batch on this gateway, from its first unanswered line to its end.

A run holds the batch's lease (renewed every third of its life); when the lease is lost (this
gateway was cut off so long that another took the batch over) it stops at once and writes
nothing more.  It sends up to ``concurrency`` lines at a time through ``LineExecutor``, each
result stored as it comes, and every ``WATCH_S`` reads the batch: a cancel (from any replica)
or the end of the 24 h window stops it, the in-flight requests are cancelled, and the batch ends
``cancelled`` or ``expired`` with what was answered.  Otherwise, once every line has its answer,
it ends ``completed``.  Either way its output and error files are written (ids derived from the
batch id, so a successor that finishes the same batch again overwrites rather than duplicates),
then its stored answers are dropped.

An answer counts in the tenant's file budget as it is stored; one the store will not keep (over
the line's cap or the budget) becomes that line's own error, ``batch_output_too_large``, so the
batch still ends with every line in its output or error file (``outputs.py`` puts them together).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from loraplex.gateway.batches.errors import ResultTooLargeError
from loraplex.gateway.batches.execute import LineExecutor, RetryLater
from loraplex.gateway.batches.lines import BatchLine, iter_lines
from loraplex.gateway.batches.objects import TERMINAL, file_object, result_line, too_large_line
from loraplex.gateway.batches.outputs import assemble
from loraplex.gateway.batches.store import BatchStore, Record
from loraplex.timeouts import cancel_requested

log = logging.getLogger(__name__)

WATCH_S = 0.5  # how often a run reads its batch (cancel, window, progress)
RETRY_S = 1.0  # first wait before a line refused for now is sent again; doubles up to MAX_RETRY_S
MAX_RETRY_S = 8.0
OVER_S = 5.0  # the most a run's end waits for its lease keeper and watcher
ENDINGS = {None: "completed", "cancel": "cancelled", "expire": "expired"}


def output_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


class BatchRun:
    def __init__(
        self,
        store: BatchStore,
        execute: LineExecutor,
        tenant: str,
        batch_id: str,
        owner: str,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        counts: Counter[str] | None = None,  # the runner's, for metrics
    ) -> None:
        self.store = store
        self.counts = Counter() if counts is None else counts
        self.execute = execute
        self.tenant = tenant
        self.batch_id = batch_id
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self.stop = asyncio.Event()  # send no more lines
        self.over = asyncio.Event()  # the run is over: its lease keeper and watcher end
        self.ending: str | None = None  # "cancel" or "expire" once one stops the run
        self.lease_lost = False
        self.failure: Exception | None = None  # a result that could not be stored
        self.answered: dict[str, int] = {"completed": 0, "failed": 0}

    async def go(self) -> None:
        store, tenant, batch_id = self.store, self.tenant, self.batch_id
        batch = await store.get_batch(tenant, batch_id)
        if batch is None or batch["status"] in TERMINAL:  # a run that ended before dropping them
            await store.drop_results(tenant, batch_id)
            await store.deactivate(tenant, batch_id)
            return
        endpoint = batch["endpoint"]
        content = await store.file_content(tenant, batch["input_file_id"])
        if content is None:  # deleted while the batch ran: end it with what is answered
            log.warning("batch %s: its input file is gone; ending it", batch_id)
            self.ending, content = "cancel", b""
        done = await store.answered(tenant, batch_id)
        for ok in done.values():
            self.answered["completed" if ok else "failed"] += 1
        todo = (line for line in iter_lines(content, endpoint) if line.index not in done)
        keeper = asyncio.create_task(self._keep_lease())
        watcher = asyncio.create_task(self._watch(batch["expires_at"]))
        try:
            await self._send(endpoint, todo)
        finally:
            # Their loops end on ``over`` too: a Redis call can swallow a cancel (see
            # ``timeouts.cancel_requested``), and a task that goes back to sleep then would
            # hold this run forever.
            self.over.set()
            for t in (keeper, watcher):
                t.cancel()
            await asyncio.wait((keeper, watcher), timeout=OVER_S)
        if not self.lease_lost:
            await self._finish(content, endpoint, _output_life_s(batch, store.limits.ttl_s))

    async def _send(self, endpoint: str, todo: Iterator[BatchLine]) -> None:
        slots = asyncio.Semaphore(self.store.limits.concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            for line in todo:
                await _until(slots.acquire(), self.stop)
                if self.stop.is_set():
                    break
                task = asyncio.create_task(self._one(endpoint, line))
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), slots.release()))
            if running:
                await _until(asyncio.wait(set(running)), self.stop)
        finally:
            for t in running:
                t.cancel()  # a generation's close cancels its request in the scheduler
            await asyncio.gather(*running, return_exceptions=True)
        if self.failure is not None:  # an answer could not be stored: never end without it
            raise self.failure

    async def _one(self, endpoint: str, line: BatchLine) -> None:
        delay = RETRY_S
        while not cancel_requested():
            try:
                status, body = await self.execute(
                    self.tenant, endpoint, line.body, lambda: not self.stop.is_set()
                )
                break
            except RetryLater:
                self.counts["retried"] += 1
                await _until(asyncio.sleep(delay), self.stop)
                if self.stop.is_set():
                    return
                delay = min(MAX_RETRY_S, delay * 2)
        else:  # asked to stop (a swallowed cancel)
            raise asyncio.CancelledError
        if self.stop.is_set() and status != 200:
            return  # stopped under it: not this line's answer
        ok = status == 200
        tenant, batch_id, index = self.tenant, self.batch_id, line.index
        try:
            try:
                await self.store.add_result(
                    tenant, batch_id, index, ok, result_line(line.custom_id, status, body)
                )
            except ResultTooLargeError as e:  # not kept: the line's own (small) error instead
                ok = False
                error = too_large_line(line.custom_id, e.status, str(e))
                await self.store.add_result(tenant, batch_id, index, ok, error, forced=True)
        except Exception as e:  # the store is away: stop; the run is taken up again later
            self.failure = e
            self.stop.set()
            return
        self.answered["completed" if ok else "failed"] += 1
        self.counts["completed" if ok else "failed"] += 1

    async def _keep_lease(self) -> None:
        while not self.over.is_set():
            await _until(asyncio.sleep(self.lease_s / 3), self.over)
            if self.over.is_set():
                return
            try:
                held = await self.store.renew(self.tenant, self.batch_id, self.owner, self.lease_s)
            except Exception:  # Redis away: try again; the lease may hold
                _unless_cancelled()
                continue
            if not held:
                log.warning("batch %s: lease lost; another gateway runs it", self.batch_id)
                self.lease_lost = True
                self.stop.set()
                return

    async def _watch(self, expires_at: int) -> None:
        written: dict[str, int] = {}
        while not self.over.is_set():
            await _until(asyncio.sleep(WATCH_S), self.over)
            if self.over.is_set():
                return
            if self.clock() >= expires_at:
                self.ending = "expire"
                self.stop.set()
                return
            counts = dict(self.answered)
            try:
                batch = await self.store.update_batch(
                    self.tenant, self.batch_id, _progress(counts) if counts != written else _same
                )
            except Exception:  # Redis away: the next look
                _unless_cancelled()
                continue
            written = counts
            if batch is None or batch["status"] == "cancelling":
                self.ending = "cancel"
                self.stop.set()
                return

    async def _finish(self, content: bytes, endpoint: str, life_s: int) -> None:
        store, tenant, batch_id = self.store, self.tenant, self.batch_id
        status = ENDINGS[self.ending]
        made = await assemble(store, tenant, batch_id, content, endpoint, status)
        files = {}
        for kind, rows in (("output", made.output), ("error", made.errors)):
            if rows:
                files[kind] = await self._store_file(kind, rows, life_s)
        counts = {"completed": made.completed, "failed": made.failed}
        made.output.clear()  # up to the tenant's budget: not held while the batch is updated
        made.errors.clear()
        now = int(self.clock())

        def end(b: Record) -> Record | None:
            if b["status"] in TERMINAL:
                return None
            b.update(status=status, output_file_id=files.get("output"))
            b.update(error_file_id=files.get("error"), finalizing_at=b["finalizing_at"] or now)
            b["request_counts"] = {**b["request_counts"], **counts}
            b[f"{status}_at"] = now
            return b

        await store.update_batch(tenant, batch_id, end)
        await store.drop_results(tenant, batch_id)  # in its files now (a crash before: go())
        await store.deactivate(tenant, batch_id)
        log.info("batch %s of %s %s: %s", batch_id, tenant, status, counts)

    async def _store_file(self, kind: str, content: bytes | bytearray, life_s: int) -> str:
        file_id = output_file_id(self.batch_id, kind)
        name = f"{self.batch_id}_{kind}.jsonl"
        meta = file_object(
            file_id, name, "batch_output", len(content), int(self.clock()), life_s
        )  # fmt: skip
        await self.store.put_file(self.tenant, meta, content, forced=True)
        return file_id


def _output_life_s(batch: Record, ttl_s: int) -> int:
    """How long the batch's output and error files live: as its create asked, or ``ttl_s``."""
    asked = batch.get("output_expires_after")
    return min(int(asked["seconds"]), ttl_s) if isinstance(asked, dict) else ttl_s


def _unless_cancelled() -> None:
    if cancel_requested():
        raise asyncio.CancelledError


def _same(_: Record) -> None:
    return None


def _progress(counts: dict[str, int]) -> Callable[[Record], Record | None]:
    def change(b: Record) -> Record | None:
        if b["status"] != "in_progress":
            return None
        b["request_counts"] = {**b["request_counts"], **counts}
        return b

    return change


async def _until(work: Any, stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first (then ``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopped):
            t.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
