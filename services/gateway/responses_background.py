"""Background responses (OpenAI's ``background: true``, as vLLM serves it with a store): the
answer is kept as ``in_progress`` at once and returned; the generation goes on in this gateway,
and its end (``completed``, ``incomplete`` or ``failed``) replaces the kept answer, which any
gateway replica reads (``GET /v1/responses/{id}``) or cancels.

With ``stream: true`` too, the client gets the response's events as they come, and a client that
leaves does not stop the response: every event is also logged (``response_events.py``), and
``GET /v1/responses/{id}?stream=true&starting_after=N`` on any replica streams them again from
sequence number N + 1, then live until the response ends.  On the generating gateway readers
follow its events in memory; elsewhere they read the log every ``POLL_S``, and give up with an
``error`` event when nothing came for longer than the generating gateway's own time limit.

A cancel may reach another replica than the one generating, so it works through shared parts
only: the kept answer becomes ``cancelled`` (the generating task sees that and never overwrites
it), the scheduler is told to cancel the request (the compute stops), and the generating gateway
gets a ``RequestError`` for it on its stream subject, so its task ends at once (with an ``error``
event, for a streamed one).  The kept answer holds what that needs (``owner``: the scheduler's
request id and the gateway's id; ``events`` when it is streamed), never shown.  Tasks still
running when the gateway stops are cancelled and their answers marked ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from loraplex.bus import Bus
from loraplex.errors import LoraplexError
from loraplex.gateway.errors import InvalidParamError, classify
from loraplex.gateway.generation import Generation, Usage
from loraplex.gateway.response_events import Event, EventLog, encode_event
from loraplex.gateway.response_store import StoredResponse
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.responses_output import ResponseStream, whole_response
from loraplex.protocol import CancelRequest, RequestError, Subjects
from loraplex.timeouts import wait_for

log = logging.getLogger(__name__)

CANCELLED_CODE = 499  # the RequestError a cancel sends the generating gateway
POLL_S = 0.1  # how often a reader on another replica reads the log
ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


@dataclass
class _Job:
    """One background response being generated; ``events``: all it sent so far (streamed)."""

    tenant: str
    stream: ResponseStream
    gen: Generation
    items: list[dict[str, Any]]  # its conversation, kept with each version of the answer
    owner: dict[str, str]  # StoredResponse.owner: where a cancel must reach
    events: list[Event] | None = None  # None: not streamed
    done: bool = False
    logged_bytes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced at each event


class BackgroundResponses:
    """This gateway's running background responses."""

    def __init__(
        self,
        history: ResponseHistory,
        bus: Bus,
        gateway_id: str,
        events: EventLog | None = None,
        idle_s: float = 130.0,
    ) -> None:
        self.history, self.bus, self.gateway_id = history, bus, gateway_id
        self.log, self.idle_s = events, idle_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._streamed: dict[str, _Job] = {}  # response id -> its job, while it runs here

    async def start(
        self,
        tenant: str,
        stream: ResponseStream,
        gen: Generation,
        items: list[dict[str, Any]],
        streamed: bool = False,
    ) -> dict[str, Any]:
        """Keep the ``in_progress`` answer and run the rest in a task; the answer to return.
        A store that cannot keep it fails the request (a background answer must be findable)."""
        owner = {"request_id": gen.request_id, "gateway_id": self.gateway_id}
        if streamed:
            owner["events"] = "1"
        job = _Job(tenant, stream, gen, items, owner, [] if streamed else None)
        created = stream.start()
        response = created[0]["response"]
        await self.history.put(tenant, StoredResponse(response, items, owner))
        if streamed:
            self._streamed[stream.response_id] = job
            await self._emit(job, created)
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return response

    async def _run(self, job: _Job) -> None:
        gen, stream = job.gen, job.stream
        try:
            answer, last = await (
                self._streaming(job) if job.events is not None else self._whole(job)
            )
        except asyncio.CancelledError:  # the gateway stops
            await gen.aclose()
            error = {"code": "server_error", "message": "the gateway stopped"}
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._finish(job, self._failed(stream, error), [stream.error(error)])
                )
            raise
        except LoraplexError as e:
            await gen.aclose()
            error = classify(e)[1]["error"]
            answer, last = self._failed(stream, error), [stream.error(error)]
        await self._finish(job, answer, last)

    async def _whole(self, job: _Job) -> tuple[dict[str, Any], list[Event]]:
        gen = job.gen
        text = await gen.collect()
        await gen.aclose()
        return whole_response(job.stream, text, gen.finish_reason, Usage.total([gen], [gen])), []

    async def _streaming(self, job: _Job) -> tuple[dict[str, Any], list[Event]]:
        """Generate event by event; the closing events are returned, not yet sent (the answer is
        kept first, so a client told it is done finds it)."""
        gen, stream = job.gen, job.stream
        reason: str | None = None
        while (delta := await gen.next()) is not None:
            events = stream.feed(delta.text)
            if delta.finish_reason is not None:
                reason = delta.finish_reason
                break
            await self._emit(job, events)
        else:
            events = []
        await gen.aclose()
        closing = [*events, *stream.finish(reason, Usage.total([gen], [gen]))]
        return closing[-1]["response"], closing

    async def _finish(self, job: _Job, answer: dict[str, Any], last: list[Event]) -> None:
        try:
            kept = await self.history.find(job.tenant, job.stream.response_id)
            if kept is None or kept.response.get("status") != "cancelled":  # else: that it is
                await self.history.put(job.tenant, StoredResponse(answer, job.items, job.owner))
        except Exception as e:  # the store is down: GET says in_progress until its TTL
            log.warning("background response %s not kept: %s", job.stream.response_id, e)
        if job.events is not None:
            await self._emit(job, last, closing=True)
            self._streamed.pop(job.stream.response_id, None)

    async def _emit(self, job: _Job, events: list[Event], closing: bool = False) -> None:
        """Send ``events`` to this gateway's readers and log them for the others' (text deltas
        only while the log is within ``--responses-max-kb``; a log that fails is skipped)."""
        assert job.events is not None
        job.events += events
        job.done = closing
        job.changed, woken = asyncio.Event(), job.changed
        woken.set()
        if self.log is None or not events:
            return
        raw = [encode_event(e) for e in events]
        size = sum(len(r) for r in raw)
        if not closing and job.logged_bytes + size > self.log.limits.max_bytes:
            return
        job.logged_bytes += size
        try:
            await self.log.append(job.tenant, job.stream.response_id, raw)
        except Exception as e:
            log.warning("events of response %s not logged: %s", job.stream.response_id, e)

    @staticmethod
    def _failed(stream: ResponseStream, error: dict[str, Any]) -> dict[str, Any]:
        response = stream.body()
        code = error.get("code") or "server_error"
        response.update(status="failed", error={"code": code, "message": error["message"]})
        return response

    # ---- readers ------------------------------------------------------------------------------
    async def follow(self, tenant: str, response_id: str, after: int) -> AsyncIterator[Event]:
        """The events of streamed background response ``response_id`` with sequence numbers
        above ``after``, until it ends (404 or 400 before the first for one that is not)."""
        job = self._streamed.get(response_id)
        if job is None or job.tenant != tenant:
            kept = await self.history.get(tenant, response_id)
            if (kept.owner or {}).get("events") != "1":
                raise InvalidParamError(
                    "only a background response created with stream: true can be streamed",
                    "stream",
                )
        return (
            self._from_job(job, after)
            if job is not None and job.tenant == tenant
            else (self._from_log(tenant, response_id, after))
        )

    @staticmethod
    async def _from_job(job: _Job, after: int) -> AsyncIterator[Event]:
        assert job.events is not None
        i = 0
        while True:
            changed, done = job.changed, job.done
            fresh = job.events[i:]  # more may come while these are sent
            i += len(fresh)
            for event in fresh:
                if event["sequence_number"] > after:
                    yield event
            if done:
                return
            await changed.wait()

    async def _from_log(self, tenant: str, response_id: str, after: int) -> AsyncIterator[Event]:
        assert self.log is not None
        start, idle = 0, 0.0
        while True:
            events = await self.log.read(tenant, response_id, start)
            start += len(events)
            for event in events:
                if event["sequence_number"] > after:
                    yield event
                if event["type"] in ENDS:
                    return
            idle = 0.0 if events else idle + POLL_S
            if idle > self.idle_s:  # its gateway is gone (a stopped one logs an end)
                yield {
                    "type": "error",
                    "sequence_number": max(after, start) + 1,
                    "code": "server_error",
                    "message": "the response's events stopped coming; GET it for its state",
                    "param": None,
                }
                return
            await asyncio.sleep(POLL_S)

    async def forget(self, tenant: str, response_id: str) -> None:
        """The response was deleted: its event log goes too (best effort: it expires anyway)."""
        if self.log is not None:
            with contextlib.suppress(Exception):
                await self.log.delete(tenant, response_id)

    # ---- cancel and stop ----------------------------------------------------------------------
    async def cancel(self, tenant: str, response_id: str) -> dict[str, Any]:
        """OpenAI's ``POST /v1/responses/{id}/cancel``: the answer, ``cancelled`` if it was
        still in progress (a finished one comes back as it is)."""
        kept = await self.history.get(tenant, response_id)
        if kept.owner is None:
            raise InvalidParamError("only a background response can be cancelled", "response_id")
        if kept.response.get("status") not in ("queued", "in_progress"):
            return kept.response
        response = {**kept.response, "status": "cancelled"}
        await self.history.put(tenant, StoredResponse(response, kept.items, kept.owner))
        request_id, gateway_id = kept.owner["request_id"], kept.owner["gateway_id"]
        with contextlib.suppress(Exception):  # best effort: the task ends at its timeout
            await self.bus.publish(Subjects.CANCEL, CancelRequest(request_id, "cancelled"))
            error = RequestError(request_id, CANCELLED_CODE, "the response was cancelled")
            await self.bus.publish(Subjects.stream(gateway_id), error)
        return response

    async def stop(self) -> None:
        """Cancel the running tasks (their answers are marked failed) and wait for them."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        deadline = time.monotonic() + 5
        for t in tasks:
            with contextlib.suppress(BaseException):
                await wait_for(t, max(0.1, deadline - time.monotonic()))
