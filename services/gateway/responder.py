"""Turning a started ``Generation`` into an HTTP answer: one JSON object or an SSE stream.

The first delta is awaited *before* the answer starts, so an error or a timeout that happens
before any token still gets its own HTTP status.  While waiting, the client's disconnect is
watched, both as uvicorn's ``http.disconnect`` and by probing the connection's socket
(``peer.PeerProbe``: uvicorn can report a client that left many seconds late); when the client
goes away the generation is closed, which publishes ``CancelRequest``.
Errors after the stream started are sent as an SSE ``{"error": {...}}`` event, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from loraplex.errors import LoraplexError
from loraplex.gateway.errors import ClientDisconnectedError, classify
from loraplex.gateway.generation import Generation, TextDelta, Usage
from loraplex.gateway.openai_format import DONE, CompletionFormat, sse
from loraplex.gateway.peer import PeerProbe

T = TypeVar("T")


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(
    receive: Receive, work: Awaitable[T], probe: PeerProbe | None = None
) -> T:
    """``await work``, unless the client disconnects first (then ClientDisconnectedError):
    ``http.disconnect`` arrives, or the probe finds the connection's socket closed."""
    task = asyncio.ensure_future(work)
    watches = [asyncio.ensure_future(_wait_disconnect(receive))]
    if probe is not None:
        watches.append(asyncio.ensure_future(probe.wait_gone()))
    try:
        await asyncio.wait({task, *watches}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, *watches):
            t.cancel()
        await asyncio.gather(task, *watches, return_exceptions=True)
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
        probe = PeerProbe.from_scope(scope)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await until_disconnected(receive, self._pump(send, probe), probe)
        except (ClientDisconnectedError, OSError):
            pass  # nobody to answer; on_close cancels the request upstream
        finally:
            await self.events.aclose()
            await self.on_close()

    async def _pump(self, send: Send, probe: PeerProbe | None) -> None:
        async for event in self.events:
            if probe is not None and probe.gone():  # checked each token: stop within a step
                raise ClientDisconnectedError("client disconnected during the stream")
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def all_of(works: list[Awaitable[T]]) -> list[T]:
    """Await every one; when one fails, cancel the others before raising."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _StreamIds:
    """vLLM's ``return_token_ids`` in a stream: each chunk carries the ids received since the
    last chunk of its choice (text held back keeps its ids for the chunk that shows it), the
    first chunk of a choice its prompt's ids too."""

    def __init__(self, gens: list[Generation]) -> None:
        self.gens = gens
        self.pending: dict[int, list[int]] = {}
        self.prompt_sent: set[int] = set()

    def received(self, index: int, token_ids: tuple[int, ...]) -> None:
        self.pending.setdefault(index, []).extend(token_ids)

    def attach(self, fmt: CompletionFormat, chunk: dict[str, Any], index: int) -> dict[str, Any]:
        prompt = None if index in self.prompt_sent else self.gens[index].prompt_ids
        self.prompt_sent.add(index)
        return fmt.with_token_ids(chunk, self.pending.pop(index, []), prompt)


def _usage(gens: list[Generation], n: int) -> Usage:
    """Each prompt counts once (its ``n`` choices are ``gens[i * n : (i + 1) * n]``); every
    choice's completion adds up (as OpenAI and vLLM report ``n`` and batch prompts)."""
    return Usage.total(gens[::n], gens)


async def _itself(work: Awaitable[T]) -> T:
    return await work


async def whole_answer(
    gens: list[Generation],
    fmt: CompletionFormat,
    n: int,
    firsts: list[TextDelta | None] | None = None,
    wait: Callable[[Awaitable[Any]], Awaitable[Any]] = _itself,
) -> dict[str, Any]:
    """The one JSON answer of started generations (``firsts``: their first deltas, when already
    read); ``wait`` wraps each await (the HTTP route's watches the client).  The caller closes
    the generations."""
    if firsts is None:
        firsts = await wait(all_of([g.next() for g in gens]))
    collected = [g.collect(f) for g, f in zip(gens, firsts, strict=True)]
    texts = await wait(all_of(collected))
    answers = [(t, g.finish_reason, g.logprobs) for t, g in zip(texts, gens, strict=True)]
    usage = _usage(gens, n)

    def build() -> dict[str, Any]:
        prompts = None
        if fmt.prompt_logprobs is not None:
            prompts = [g.prompt_logprobs() for g in gens]
        out = fmt.response(answers, usage, prompts)
        if fmt.return_token_ids:
            fmt.add_token_ids(out, [(g.prompt_ids, g.received_token_ids) for g in gens])
        return out

    # Off the loop: a big answer (up to LORAPLEX_GATEWAY_MAX_ANSWER_MB) takes its builder
    # seconds, which other tenants' streams must not wait for.
    return await asyncio.to_thread(build)


async def respond(
    request: Request,
    gens: list[Generation],
    fmt: CompletionFormat,
    stream: bool,
    include_usage: bool,
    n: int = 1,
) -> Response:
    """The answer for started generations, one per choice (``n`` per prompt, prompt-major);
    they are always closed once the answer is done."""

    async def close() -> None:
        for g in gens:
            await g.aclose()

    try:
        probe = PeerProbe.from_scope(request.scope)

        def wait(work: Awaitable[T]) -> Awaitable[T]:
            return until_disconnected(request.receive, work, probe)

        firsts = await wait(all_of([g.next() for g in gens]))
        if not stream:
            out = await whole_answer(gens, fmt, n, firsts, wait)
            await close()
            return await asyncio.to_thread(JSONResponse, out)  # encoded off the loop too
    except BaseException:
        await close()
        raise
    return SSEResponse(_events(gens, fmt, firsts, include_usage, n), close)


async def _events(
    gens: list[Generation],
    fmt: CompletionFormat,
    firsts: list[TextDelta | None],
    include_usage: bool,
    n: int,
) -> AsyncIterator[str]:
    for chunk in fmt.first_chunks(len(gens)):
        yield sse(chunk)
    # One reader per choice; chunks go out in the order they arrive, tagged with their index.
    # One at a time: a reader waits for the client to take the last before it reads on, so what
    # a slow client has not read stays in the request's queue, joined and counted (streams.py).
    queue: asyncio.Queue[tuple[int, TextDelta | LoraplexError | None]] = asyncio.Queue(1)

    async def read(index: int, gen: Generation, delta: TextDelta | None) -> None:
        try:
            while delta is not None:
                await queue.put((index, delta))
                delta = await gen.next()
            await queue.put((index, None))
        except LoraplexError as e:
            await queue.put((index, e))

    readers = [
        asyncio.ensure_future(read(i, g, f))
        for i, (g, f) in enumerate(zip(gens, firsts, strict=True))
    ]
    ids = _StreamIds(gens) if fmt.return_token_ids else None
    try:
        live = len(readers)
        while live:
            index, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, LoraplexError):
                yield sse(classify(item)[1])
                yield DONE
                return
            else:
                chunks = []
                if ids is not None:
                    ids.received(index, item.token_ids)
                if item.text or item.logprobs:
                    chunks.append(fmt.chunk(item.text, None, item.logprobs, index))
                if item.finish_reason is not None:
                    chunks.append(fmt.chunk("", item.finish_reason, None, index))
                for chunk in chunks:
                    if chunk is not None:  # None: text held back (a tool call being read)
                        yield sse(chunk if ids is None else ids.attach(fmt, chunk, index))
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    if include_usage:
        yield sse(fmt.usage_chunk(_usage(gens, n)))
    yield DONE
