"""``POST /v1/responses``: OpenAI's Responses API over the chat path (``responses_api.py``,
``responses_output.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from loraplex.errors import LoraplexError
from loraplex.gateway.deps import ServiceDep, TenantDep
from loraplex.gateway.errors import classify
from loraplex.gateway.generation import Generation, TextDelta, Usage
from loraplex.gateway.peer import PeerProbe, still_connected
from loraplex.gateway.responder import SSEResponse, until_disconnected
from loraplex.gateway.responses_api import ResponsesRequest, to_chat
from loraplex.gateway.responses_output import ResponseStream, whole_response

router = APIRouter(prefix="/v1", tags=["generation"])


@router.post("/responses", summary="Create a model response (OpenAI Responses API)")
async def create_response(
    body: ResponsesRequest, tenant: TenantDep, service: ServiceDep, request: Request
) -> Response:
    prepared = await service.prepare_chat(to_chat(body), tenant.name)
    (gen,) = await service.start_choices([prepared], 1, still_connected(request.scope))
    probe = PeerProbe.from_scope(request.scope)
    try:
        first = await until_disconnected(request.receive, gen.next(), probe)
        if not body.stream:
            text = await until_disconnected(request.receive, gen.collect(first), probe)
            await gen.aclose()
            usage = Usage.total([gen], [gen])
            return JSONResponse(whole_response(body, prepared, text, gen.finish_reason, usage))
    except BaseException:
        await gen.aclose()
        raise
    return SSEResponse(_events(ResponseStream(body, prepared), gen, first), gen.aclose)


def _sse(event: dict[str, Any]) -> str:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n"


async def _events(
    stream: ResponseStream, gen: Generation, delta: TextDelta | None
) -> AsyncIterator[str]:
    for event in stream.start():
        yield _sse(event)
    try:
        while delta is not None:
            for event in stream.feed(delta.text):
                yield _sse(event)
            if delta.finish_reason is not None:
                usage = Usage.total([gen], [gen])
                for event in stream.finish(delta.finish_reason, usage):
                    yield _sse(event)
            delta = await gen.next()
    except LoraplexError as e:
        error = classify(e)[1]["error"]
        yield _sse(
            stream._event(
                "error", code=error.get("code"), message=error["message"], param=error.get("param")
            )
        )
