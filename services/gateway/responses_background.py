"""Background responses (OpenAI's ``background: true``, as vLLM serves it with a store): the
answer is kept as ``in_progress`` at once and returned; the generation goes on in this gateway,
and its end (``completed``, ``incomplete`` or ``failed``) replaces the kept answer, which any
gateway replica reads (``GET /v1/responses/{id}``) or cancels.

A cancel may reach another replica than the one generating, so it works through shared parts
only: the kept answer becomes ``cancelled`` (the generating task sees that and never overwrites
it), the scheduler is told to cancel the request (the compute stops), and the generating gateway
gets a ``RequestError`` for it on its stream subject, so its task ends at once.  The kept answer
holds what that needs (``owner``: the scheduler's request id and the gateway's id), never shown.
Tasks still running when the gateway stops are cancelled and their answers marked ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from loraplex.bus import Bus
from loraplex.errors import LoraplexError
from loraplex.gateway.errors import InvalidParamError, classify
from loraplex.gateway.generation import Generation, Usage
from loraplex.gateway.response_store import StoredResponse
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.responses_output import ResponseStream, whole_response
from loraplex.protocol import CancelRequest, RequestError, Subjects
from loraplex.timeouts import wait_for

log = logging.getLogger(__name__)

CANCELLED_CODE = 499  # the RequestError a cancel sends the generating gateway


@dataclass(frozen=True)
class _Job:
    """One background response being generated."""

    tenant: str
    stream: ResponseStream
    gen: Generation
    items: list[dict[str, Any]]  # its conversation, kept with each version of the answer
    owner: dict[str, str]  # StoredResponse.owner: where a cancel must reach


class BackgroundResponses:
    """This gateway's running background responses."""

    def __init__(self, history: ResponseHistory, bus: Bus, gateway_id: str) -> None:
        self.history, self.bus, self.gateway_id = history, bus, gateway_id
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, tenant: str, stream: ResponseStream, gen: Generation, items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Keep the ``in_progress`` answer and run the rest in a task; the answer to return.
        A store that cannot keep it fails the request (a background answer must be findable)."""
        response = stream.start()[0]["response"]
        owner = {"request_id": gen.request_id, "gateway_id": self.gateway_id}
        job = _Job(tenant, stream, gen, items, owner)
        await self.history.put(tenant, StoredResponse(response, items, owner))
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return response

    async def _run(self, job: _Job) -> None:
        gen, stream = job.gen, job.stream
        try:
            text = await gen.collect()
            await gen.aclose()
            answer = whole_response(stream, text, gen.finish_reason, Usage.total([gen], [gen]))
        except asyncio.CancelledError:  # the gateway stops
            await gen.aclose()
            answer = self._failed(stream, "server_error", "the gateway stopped")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish(job, answer))
            raise
        except LoraplexError as e:
            await gen.aclose()
            error = classify(e)[1]["error"]
            answer = self._failed(stream, error.get("code") or "server_error", error["message"])
        try:
            await self._finish(job, answer)
        except Exception as e:  # the store is down: GET says in_progress until its TTL
            log.warning("background response %s not kept: %s", stream.response_id, e)

    async def _finish(self, job: _Job, answer: dict[str, Any]) -> None:
        kept = await self.history.find(job.tenant, job.stream.response_id)
        if kept is not None and kept.response.get("status") == "cancelled":
            return  # cancelled meanwhile: that is the answer
        await self.history.put(job.tenant, StoredResponse(answer, job.items, job.owner))

    @staticmethod
    def _failed(stream: ResponseStream, code: str, message: str) -> dict[str, Any]:
        response = stream.start()[0]["response"]
        response.update(status="failed", error={"code": code, "message": message})
        return response

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
