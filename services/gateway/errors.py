"""Typed gateway errors and the one place that turns every error into an OpenAI error answer.

Inside the gateway, code raises ``LoraplexError`` subclasses; ``install_error_handlers`` maps
them (and FastAPI's validation errors, unknown routes, anything unexpected) to
``{"error": {"message", "type", "param", "code"}}`` with the status in ``ERROR_MAP``.
"""

from __future__ import annotations

import logging
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


class InvalidParamError(InvalidRequestError):
    """A request parameter is invalid (400); ``param`` names it in the error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFoundError(LoraplexError):
    """``model`` is neither the base model nor an adapter this tenant may use (404)."""

    param = "model"


class PayloadTooLargeError(LoraplexError):
    """The request body exceeds the gateway's limit (413)."""


class UpstreamError(LoraplexError):
    """An answer with a status chosen elsewhere (scheduler reply, worker error)."""

    fallback_status = 500  # when the status given is not an error status

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status if 400 <= status < 600 else self.fallback_status


class SchedulerRejectedError(UpstreamError):
    """The scheduler refused the request (SubmitReply.accepted is false): 429 / 503 / ..."""

    fallback_status = 503


class RequestFailedError(UpstreamError):
    """A worker reported a RequestError for the request."""


class SchedulerUnavailableError(LoraplexError):
    """No scheduler answered the submit (none running, or too slow): 503."""


class RequestTimeoutError(LoraplexError):
    """Nothing arrived for the request within ``request_timeout_s``: 504."""


class ClientDisconnectedError(LoraplexError):
    """The client went away before the answer was ready (499, never seen by anyone)."""


# exception type -> (status, code); the first matching entry (in order) wins.
ERROR_MAP: tuple[tuple[type[LoraplexError], int, str | None], ...] = (
    (AuthenticationError, 401, "invalid_api_key"),
    (ModelNotFoundError, 404, "model_not_found"),
    (AdapterNotFoundError, 404, "adapter_not_found"),
    (PayloadTooLargeError, 413, "request_too_large"),
    (AdapterTooLargeError, 413, "adapter_too_large"),
    (UploadLimitError, 429, "rate_limit_exceeded"),
    (AdapterForbiddenError, 403, "adapter_forbidden"),
    (AdapterPathError, 403, "path_not_allowed"),
    (AdapterExistsError, 409, "adapter_exists"),
    (AdapterError, 400, "invalid_adapter"),
    (InvalidRequestError, 400, "invalid_request"),
    (CapacityError, 400, "request_too_large_for_capacity"),
    (SchedulerUnavailableError, 503, "scheduler_unavailable"),
    (StoreUnavailableError, 503, "store_unavailable"),
    (RequestTimeoutError, 504, "timeout"),
    (ClientDisconnectedError, 499, "client_disconnected"),
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
_UPSTREAM_CODES = {429: "rate_limit_exceeded", 503: "service_unavailable"}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def classify(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) of an exception raised inside the gateway."""
    if isinstance(exc, UpstreamError):
        return exc.status, error_body(exc.status, str(exc), None, _UPSTREAM_CODES.get(exc.status))
    if isinstance(exc, LoraplexError):
        for kind, status, code in ERROR_MAP:
            if isinstance(exc, kind):
                param = getattr(exc, "param", None)
                return status, error_body(
                    status, str(exc), param, getattr(exc, "code", None) or code
                )
        return 500, error_body(500, str(exc), None, "internal_error")
    return 500, error_body(500, "internal server error", None, "internal_error")


def error_response(exc: BaseException) -> JSONResponse:
    status, body = classify(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
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
    locs = [[p for p in e.get("loc", ()) if p != "body"] for e in errors]
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


def install_error_handlers(app: FastAPI) -> None:
    async def on_loraplex(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return JSONResponse(error_body(400, message, param, "invalid_value"), status_code=400)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return JSONResponse(error_body(status, message, None, code), status, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(exc)

    app.add_exception_handler(LoraplexError, on_loraplex)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
