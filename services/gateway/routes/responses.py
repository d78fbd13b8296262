"""OpenAI's Responses API over the chat path (``responses_api.py``, ``responses_output.py``):
``POST /v1/responses``, and for kept responses (``responses_history.py``) ``GET`` and ``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and, for background ones
(``responses_background.py``), ``POST /v1/responses/{id}/cancel`` and, for streamed background
ones, ``GET /v1/responses/{id}?stream=true&starting_after=N``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from loraplex.errors import LoraplexError
from loraplex.gateway.deps import HistoryDep, ServiceDep, TenantDep
from loraplex.gateway.errors import InvalidParamError, classify
from loraplex.gateway.generation import Generation, TextDelta, Usage
from loraplex.gateway.peer import PeerProbe, still_connected
from loraplex.gateway.responder import SSEResponse, until_disconnected
from loraplex.gateway.responses_api import ResponsesRequest
from loraplex.gateway.responses_background import BackgroundResponses
from loraplex.gateway.responses_history import ResponseHistory, page
from loraplex.gateway.responses_output import ResponseStream, whole_response
from loraplex.gateway.responses_prepare import prepare_response

router = APIRouter(prefix="/v1", tags=["generation"])


@router.post("/responses", summary="Create a model response (OpenAI Responses API)")
async def create_response(
    body: ResponsesRequest,
    tenant: TenantDep,
    service: ServiceDep,
    history: HistoryDep,
    request: Request,
) -> Response:
    if body.background:
        _check_background(body, history)
    ready = await prepare_response(body, tenant.name, service, history)
    stream = ready.stream
    (gen,) = await service.start_choices([ready.prompt], 1, still_connected(request.scope))
    if body.background:  # queued now; the client comes back with GET (or cancels)
        background: BackgroundResponses = request.app.state.background
        try:
            started = await background.start(tenant.name, stream, gen, ready.items, body.stream)
        except BaseException:
            await gen.aclose()
            raise
        if body.stream:  # a client that leaves stops following, not the response
            return _followed(await background.follow(tenant.name, started["id"], -1))
        return JSONResponse(started)
    probe = PeerProbe.from_scope(request.scope)
    try:
        first = await until_disconnected(request.receive, gen.next(), probe)
        if not body.stream:
            text = await until_disconnected(request.receive, gen.collect(first), probe)
            await gen.aclose()
            usage = Usage.total([gen], [gen])
            answer = whole_response(stream, text, gen.finish_reason, usage)
            return JSONResponse(await ready.keep(answer))
    except BaseException:
        await gen.aclose()
        raise
    return SSEResponse(_events(stream, gen, first, ready.keep), gen.aclose)


def _check_background(body: ResponsesRequest, history: ResponseHistory) -> None:
    if not history.keeps(body):
        raise InvalidParamError(
            "background needs store: true and a server that keeps responses (--responses-ttl)",
            "background",
        )


@router.post("/responses/{response_id}/cancel", summary="Cancel a background response")
async def cancel_response(response_id: str, tenant: TenantDep, request: Request) -> Any:
    background: BackgroundResponses = request.app.state.background
    return await background.cancel(tenant.name, response_id)


@router.get("/responses/{response_id}", summary="Retrieve a stored response")
async def get_response(
    response_id: str,
    tenant: TenantDep,
    history: HistoryDep,
    request: Request,
    stream: bool = False,
    starting_after: Annotated[int, Query(ge=-1, le=2**31)] = -1,
) -> Any:
    """The kept response; with ``stream``, a streamed background response's events after
    sequence number ``starting_after``, then live until it ends (from any replica)."""
    if stream:
        background: BackgroundResponses = request.app.state.background
        return _followed(await background.follow(tenant.name, response_id, starting_after))
    return (await history.get(tenant.name, response_id)).response


@router.delete("/responses/{response_id}", summary="Delete a stored response")
async def delete_response(
    response_id: str, tenant: TenantDep, history: HistoryDep, request: Request
) -> dict[str, Any]:
    await history.delete(tenant.name, response_id)
    await request.app.state.background.forget(tenant.name, response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items", summary="List a stored response's input")
async def list_input_items(
    response_id: str,
    tenant: TenantDep,
    history: HistoryDep,
    limit: int = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    record = await history.get(tenant.name, response_id)
    return page(record.items, limit, order, after)


def _sse(event: dict[str, Any]) -> str:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n"


def _followed(events: AsyncIterator[dict[str, Any]]) -> SSEResponse:
    async def lines() -> AsyncIterator[str]:
        sequence = -1
        try:
            async for event in events:
                sequence = event["sequence_number"]
                yield _sse(event)
        except LoraplexError as e:  # the log became unreachable midway: say so, then end
            error = classify(e)[1]["error"]
            yield _sse(
                {"type": "error", "sequence_number": sequence + 1, "code": error.get("code"),
                 "message": error["message"], "param": None}
            )  # fmt: skip

    async def nothing() -> None:  # leaving stops the reading, never the response
        return None

    return SSEResponse(lines(), nothing)  # type: ignore[arg-type]


async def _events(
    stream: ResponseStream,
    gen: Generation,
    delta: TextDelta | None,
    keep: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
) -> AsyncIterator[str]:
    for event in stream.start():
        yield _sse(event)
    try:
        while delta is not None:
            for event in stream.feed(delta.text):
                yield _sse(event)
            if delta.finish_reason is not None:
                usage = Usage.total([gen], [gen])
                *events, last = stream.finish(delta.finish_reason, usage)
                await keep(last["response"])  # kept before the client hears it is done
                for event in [*events, last]:
                    yield _sse(event)
            delta = await gen.next()
    except LoraplexError as e:
        yield _sse(stream.error(classify(e)[1]["error"]))
