"""At most ``per_tenant`` concurrent ``POST /v1/files`` uploads per tenant (in this process).

An upload is read, parsed and stored before its route runs (FastAPI reads a form before the
route's dependencies), so this pure ASGI middleware takes one of the tenant's slots before any of
the body is read: a 429 (OpenAI error body, as the adapter uploads' ``Registrar.upload_slot``)
costs the server no memory.  It runs inside ``AuthFirstMiddleware``, which already answered the
401 of a request without a valid key.
"""

from __future__ import annotations

from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

from loraplex.adapters.errors import UploadLimitError
from loraplex.gateway.auth_first import header_tenant
from loraplex.gateway.early_answer import LINGER_S, answer_and_close
from loraplex.gateway.errors import classify

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
        tenant = header_tenant(scope).name  # authenticated already (auth_first.py, outside)
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
