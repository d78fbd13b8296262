"""Request body size limit (413) for the JSON routes, as a pure ASGI middleware.

The body is read (up to the limit) before the app sees it and replayed to it, so an oversized
body is refused whether or not it declares a Content-Length.  Adapter uploads
(``/v1/adapters``) are exempt: the adapter-store logic streams them under its own limit.  File
uploads (``/v1/files``) have their own, larger limit (``by_prefix``).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.gateway.errors import PayloadTooLargeError, error_response

EXEMPT_PREFIXES = ("/v1/adapters",)
DRAIN_CAP = 64 * 1024 * 1024  # after a 413, read (and drop) this much so the client sees the answer


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_bytes: int, by_prefix: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_prefix = by_prefix or {}  # path prefix -> its own limit (file uploads)

    def _limit(self, path: str) -> int:
        return next((n for p, n in self.by_prefix.items() if path.startswith(p)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, True, limit)
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
                await self._too_large(scope, receive, send, message.get("more_body", False), limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, more_body: bool, limit: int
    ) -> None:
        drained = 0
        while more_body and drained < DRAIN_CAP:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            more_body = message.get("more_body", False)
        err = PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        await error_response(err)(scope, receive, send)
