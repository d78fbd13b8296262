"""Request body size limit (413) for the JSON routes and file uploads, as a pure ASGI middleware.

A body that declares a Content-Length over its route's limit is refused from the headers at once
(``early_answer.py``: the answer, then the connection closes), without waiting for bytes that may
never come.  Otherwise a JSON body is read (up to the limit) before the app sees it and replayed
to it, so an oversized body is refused whether or not it declares a Content-Length.  File uploads
(``/v1/files``, ``by_prefix``: their own, larger limit) are passed through and counted instead of
held in memory (the form parser spools the file to disk): past the limit they get the 413 and
the app sees the client leave.  Adapter uploads (``/v1/adapters``) are exempt: the adapter-store
logic streams them under its own limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.gateway.early_answer import DISCONNECT, LINGER_S, answer_and_close
from loraplex.gateway.errors import PayloadTooLargeError, classify

EXEMPT_PREFIXES = ("/v1/adapters",)


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_bytes: int, by_prefix: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_prefix = by_prefix or {}  # path prefix -> its own limit (file uploads)

    def _limit(self, path: str) -> tuple[int, bool]:
        """The route's limit, and whether its body is streamed through (a prefix's)."""
        found = next((n for p, n in self.by_prefix.items() if path.startswith(p)), None)
        return (self.max_bytes, False) if found is None else (found, True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        limit, streamed = self._limit(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, receive, limit)
            return
        if streamed:
            await self._counted(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                more = message.get("more_body", False)
                await _too_large(send, receive if more else None, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()  # one copy of the body, not two, while the app runs
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if not replayed:
                replayed, data, body = True, body, b""
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """The app reads the body itself; past ``limit`` it gets the client's leaving, the
        client the 413 (an app reads an upload whole before it answers)."""
        size = 0
        started = answered = False

        async def counted() -> Message:
            nonlocal size, answered
            if answered:
                return DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit and not started:
                    answered = True
                    more = message.get("more_body", False)
                    await _too_large(send, receive if more else None, limit)
                    return DISCONNECT
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)


async def _too_large(send: Send, receive: Receive | None, limit: int) -> None:
    """The 413, then the connection closes (after a short linger while the client sends on)."""
    err = PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    await answer_and_close(*classify(err), send, receive, LINGER_S)
