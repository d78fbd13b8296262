"""The one error table of loraplex's HTTP edges (the gateway and the adapter-store).

Inside, code raises typed ``LoraplexError`` subclasses; only here do they become OpenAI-style
answers, ``{"error": {"message", "type", "param", "code"}}`` with a status.  ``LIBRARY_ERRORS``
holds the rows for the library's exceptions; a service adds the rows of its own exceptions in
front (``install_error_handlers(app, extra)``), so both services answer the same exception with
the same status, type and code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterIntegrityError,
    AdapterPathError,
    AdapterQuotaError,
    AdapterTooLargeError,
    StoreUnavailableError,
    UploadLimitError,
)
from loraplex.errors import (
    AdapterError,
    AdapterNotFoundError,
    CapacityError,
    InvalidRequestError,
    LoraplexError,
)
from loraplex.tenants import AuthenticationError

log = logging.getLogger(__name__)

# exception type -> (status, code); the first matching row wins, so subclasses come first.
ErrorRow = tuple[type[BaseException], int, str | None]

LIBRARY_ERRORS: tuple[ErrorRow, ...] = (
    (AuthenticationError, 401, "invalid_api_key"),
    (AdapterNotFoundError, 404, "adapter_not_found"),
    (AdapterTooLargeError, 413, "adapter_too_large"),
    (UploadLimitError, 429, "rate_limit_exceeded"),
    (AdapterForbiddenError, 403, "adapter_forbidden"),
    (AdapterPathError, 403, "path_not_allowed"),
    (AdapterQuotaError, 403, "adapter_quota_exceeded"),
    (AdapterExistsError, 409, "adapter_exists"),
    (AdapterError, 400, "invalid_adapter"),
    (InvalidRequestError, 400, "invalid_request"),
    (CapacityError, 400, "request_too_large_for_capacity"),
    (StoreUnavailableError, 503, "store_unavailable"),
    (AdapterIntegrityError, 500, "adapter_corrupt"),
)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


# The code of an error that names none of its own (Starlette's, an upstream status), by status:
# clients branch on ``code``, so it is never null.
STATUS_CODES = {
    400: "invalid_request", 401: "invalid_api_key", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
    413: "request_too_large", 415: "unsupported_media_type", 422: "invalid_value",
    429: "rate_limit_exceeded", 499: "client_disconnected", 503: "service_unavailable",
    504: "timeout",
}  # fmt: skip


MAX_MESSAGE = 1000  # characters of an error message; a longer one is cut


def status_code_name(status: int) -> str:
    """``code`` for an error of ``status`` that has no code of its own."""
    return STATUS_CODES.get(status, "internal_error" if status >= 500 else "invalid_request")


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if len(message) > MAX_MESSAGE:  # it quotes what the client sent: a 100 KB name, say
        message = f"{message[: MAX_MESSAGE - 40]}... ({len(message)} characters in all)"
    return {"error": {"message": message, "type": kind, "param": _short(param), "code": code}}


def _short(param: str | None) -> str | None:
    return param if param is None or len(param) <= 200 else param[:197] + "..."


def classify_in(table: Sequence[ErrorRow], exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) of ``exc`` by the first row of ``table`` it matches."""
    if isinstance(exc, LoraplexError):
        for kind, status, code in table:
            if isinstance(exc, kind):
                param = getattr(exc, "param", None)
                return status, error_body(
                    status, str(exc), param, getattr(exc, "code", None) or code
                )
        return 500, error_body(500, str(exc), None, "internal_error")
    return 500, error_body(500, "internal server error", None, "internal_error")


def json_error(status: int, body: dict[str, Any]) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def _field_path(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    """``loc`` without FastAPI's leading location (``body``, ``query``, ...)."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return [p for p in parts if p != "body"]


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One message and ``param`` for pydantic's errors.

    A value that fails a union (``prompt``: str | list[int] | ...) gives one error per member,
    located under the member's type name: they are folded into one, at their common location.
    """
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    # OpenAI's ``param`` names the field alone: a query or path parameter without FastAPI's
    # location in front ("after", not "query.after"), as a body field has always been.
    locs = [_field_path(e.get("loc", ())) for e in errors]
    if not locs[0] and first.get("type") == "missing":
        return "a JSON request body is required", None
    group = [(loc, e) for loc, e in zip(locs, errors, strict=True) if loc[:1] == locs[0][:1]]
    prefix = locs[0]
    for loc, _ in group[1:]:
        n = next(
            (i for i, (a, b) in enumerate(zip(prefix, loc, strict=False)) if a != b),
            min(len(prefix), len(loc)),
        )
        prefix = prefix[:n]
    param = ".".join(str(p) for p in prefix) or None
    if len(group) == 1:
        detail = str(first.get("msg"))
    else:
        msgs = list(dict.fromkeys(str(e.get("msg")) for _, e in group))
        detail = "invalid value (" + "; or ".join(msgs[:4]) + ")"
    message = f"{param}: {detail}" if param else detail
    if len(errors) > len(group):
        message += f" (and {len(errors) - len(group)} more error(s))"
    return message, param


def install_error_handlers(
    app: FastAPI, classify: Any = None, extra: Sequence[ErrorRow] = ()
) -> None:
    """Answer every error of ``app`` with an OpenAI error body.

    ``classify(exc) -> (status, body)`` overrides the table lookup (the gateway's, which also
    passes on statuses chosen upstream); otherwise ``extra`` rows are tried before the library's.
    """
    table = (*extra, *LIBRARY_ERRORS)

    def classify_exc(exc: BaseException) -> tuple[int, dict[str, Any]]:
        return classify(exc) if classify is not None else classify_in(table, exc)

    async def on_loraplex(_: Request, exc: Exception) -> JSONResponse:
        status, body = classify_exc(exc)
        if status >= 500:
            log.error("%s: %s (cause: %r)", type(exc).__name__, exc, exc.__cause__)
        return json_error(status, body)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(exc)
        return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        body = error_body(status, message, None, status_code_name(status))
        return JSONResponse(body, status, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return json_error(*classify_exc(exc))

    app.add_exception_handler(LoraplexError, on_loraplex)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
