"""Turning a started ``Generation`` into an HTTP answer: one JSON object or an SSE stream.

The first delta is awaited *before* the answer starts, so an error or a timeout that happens
before any token still gets its own HTTP status.  While waiting, the client's disconnect is
watched; when the client goes away the generation is closed, which publishes ``CancelRequest``.
Errors after the stream started are sent as an SSE ``{"error": {...}}`` event, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from loraplex.errors import LoraplexError
from loraplex.gateway.errors import ClientDisconnectedError, classify
from loraplex.gateway.generation import Generation, TextDelta
from loraplex.gateway.openai_format import DONE, CompletionFormat, sse

T = TypeVar("T")


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects first (then ClientDisconnectedError)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnectedError("client disconnected before the answer was ready")
    return task.result()


class SSEResponse(Response):
    """A text/event-stream answer that stops (and calls ``on_close``) when the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[str, None], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await until_disconnected(receive, self._pump(send))
        except (ClientDisconnectedError, OSError):
            pass  # nobody to answer; on_close cancels the request upstream
        finally:
            await self.events.aclose()
            await self.on_close()

    async def _pump(self, send: Send) -> None:
        async for event in self.events:
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def respond(
    request: Request, gen: Generation, fmt: CompletionFormat, stream: bool, include_usage: bool
) -> Response:
    """The answer for a started generation; ``gen`` is always closed once the answer is done."""
    try:
        first = await until_disconnected(request.receive, gen.next())
        if not stream:
            text = await until_disconnected(request.receive, gen.collect(first))
            await gen.aclose()
            return JSONResponse(fmt.response(text, gen.finish_reason, gen.usage, gen.logprobs))
    except BaseException:
        await gen.aclose()
        raise
    return SSEResponse(_events(gen, fmt, first, include_usage), gen.aclose)


async def _events(
    gen: Generation, fmt: CompletionFormat, first: TextDelta | None, include_usage: bool
) -> AsyncIterator[str]:
    for chunk in fmt.first_chunks():
        yield sse(chunk)
    delta = first
    try:
        while delta is not None:
            if delta.text or delta.logprobs:
                yield sse(fmt.chunk(delta.text, None, delta.logprobs))
            if delta.finish_reason is not None:
                yield sse(fmt.chunk("", delta.finish_reason))
            delta = await gen.next()
    except LoraplexError as e:
        yield sse(classify(e)[1])
        yield DONE
        return
    if include_usage:
        yield sse(fmt.usage_chunk(gen.usage))
    yield DONE
