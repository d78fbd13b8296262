"""The only place errors become HTTP answers: OpenAI-style ``{"error": {message, type, param,
code}}`` bodies with the status each typed exception stands for."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterForbiddenError,
    AdapterIntegrityError,
    AdapterPathError,
    AdapterTooLargeError,
    StoreUnavailableError,
    UploadLimitError,
)
from loraplex.errors import AdapterError, AdapterNotFoundError, InvalidRequestError, LoraplexError
from loraplex.tenants import AuthenticationError

log = logging.getLogger(__name__)

# (exception, status, OpenAI error type, code); the first matching row wins.
_TABLE: tuple[tuple[type[Exception], int, str, str], ...] = (
    (AuthenticationError, 401, "invalid_request_error", "invalid_api_key"),
    (AdapterNotFoundError, 404, "invalid_request_error", "adapter_not_found"),
    (AdapterExistsError, 409, "invalid_request_error", "adapter_exists"),
    (AdapterTooLargeError, 413, "invalid_request_error", "adapter_too_large"),
    (UploadLimitError, 429, "rate_limit_error", "rate_limit_exceeded"),
    (AdapterForbiddenError, 403, "permission_error", "adapter_forbidden"),
    (AdapterPathError, 403, "permission_error", "path_not_allowed"),
    (AdapterError, 400, "invalid_request_error", "invalid_adapter"),
    (InvalidRequestError, 400, "invalid_request_error", "invalid_request"),
    (StoreUnavailableError, 503, "service_unavailable", "store_unavailable"),
    (AdapterIntegrityError, 500, "server_error", "adapter_corrupt"),
)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


async def _loraplex_error(_: Request, exc: Exception) -> JSONResponse:
    status, type_, code = next(
        ((s, t, c) for cls, s, t, c in _TABLE if isinstance(exc, cls)),
        (500, "server_error", "internal_error"),
    )
    if status >= 500:
        log.error("%s: %s (cause: %r)", type(exc).__name__, exc, exc.__cause__)
    body = error_body(str(exc), type_, code, getattr(exc, "param", None))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = error_body(str(exc.detail), type_, None)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
    return JSONResponse(error_body(message, "invalid_request_error", None, param), status_code=400)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error", "server_error", None), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LoraplexError, _loraplex_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
