"""A request that sends a body is authenticated from its headers before any of the body is read.

The routes authenticate (``deps.py``) only once FastAPI has read and parsed the body, and the
body limit (``limits.py``) buffers a JSON body first: so any client, with no key at all, could
make the gateway hold up to ``LORAPLEX_GATEWAY_MAX_BODY_MB`` per connection for as long as the
body timeout lets it trickle.  This pure ASGI middleware answers such a request's 401 (OpenAI
error body) from its headers and closes the connection (``early_answer.py``).  Every route that
takes a body needs a tenant; in open mode (no tenants file) every caller is the one tenant.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from loraplex.gateway.early_answer import LINGER_S, answer_and_close
from loraplex.gateway.errors import classify
from loraplex.tenants import AuthenticationError, Tenant

WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def header_tenant(scope: Scope) -> Tenant:
    """The tenant of the request's ``Authorization`` header (``AuthenticationError`` if none),
    from the app's live tenants (Starlette puts the app in the scope before its middleware)."""
    return scope["app"].state.tenants.authenticate(Headers(scope=scope).get("authorization"))


class AuthFirstMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in WITH_BODY:
            try:
                header_tenant(scope)
            except AuthenticationError as e:
                await answer_and_close(*classify(e), send, receive, LINGER_S)
                return
        await self.app(scope, receive, send)
