"""At most ``per_tenant`` concurrent ``POST /v1/files`` uploads per tenant (in this process).

An upload is read, parsed and stored before its route runs (FastAPI reads a form before the
route's dependencies), so this pure ASGI middleware authenticates the caller from its headers
and takes one of its tenant's slots before any of the body is read: a 401 or a 429 (OpenAI
error body, as the adapter uploads' ``Registrar.upload_slot``) costs the server no memory.
"""

from __future__ import annotations

from collections import Counter

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from loraplex.adapters.errors import UploadLimitError
from loraplex.gateway.early_answer import LINGER_S, answer_and_close
from loraplex.gateway.errors import classify
from loraplex.tenants import AuthenticationError

PATH = "/v1/files"


class FileUploadSlotsMiddleware:
    def __init__(self, app: ASGIApp, per_tenant: int) -> None:
        self.app = app
        self.per_tenant = per_tenant
        self._uploading: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        try:
            # the app's live tenants (Starlette puts the app in the scope before its middleware)
            tenants = scope["app"].state.tenants
            tenant = tenants.authenticate(Headers(scope=scope).get("authorization")).name
        except AuthenticationError as e:
            await answer_and_close(*classify(e), send, receive, LINGER_S)
            return
        if self._uploading[tenant] >= self.per_tenant:
            err = UploadLimitError(
                f"tenant {tenant!r} already has {self.per_tenant} file uploads in progress; "
                "retry when one has finished"
            )
            await answer_and_close(*classify(err), send, receive, LINGER_S)
            return
        self._uploading[tenant] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._uploading[tenant] -= 1
            if not self._uploading[tenant]:
                del self._uploading[tenant]
