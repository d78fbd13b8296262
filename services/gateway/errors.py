"""Typed gateway errors; the error table they share with the adapter-store is
``loraplex.http_errors``, the one place that turns errors into OpenAI error answers.

Inside the gateway, code raises ``LoraplexError`` subclasses; ``install_error_handlers`` maps
them (and FastAPI's validation errors, unknown routes, anything unexpected) to
``{"error": {"message", "type", "param", "code"}}`` with the status in ``ERROR_MAP``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from loraplex.errors import InvalidRequestError, LoraplexError
from loraplex.gateway.batches.errors import (
    BatchLimitError,
    BatchNotFoundError,
    BatchStoreUnavailableError,
    FilesQuotaError,
)
from loraplex.gateway.response_store import ResponseNotFoundError, ResponseStoreUnavailableError
from loraplex.http_errors import (
    LIBRARY_ERRORS,
    ErrorRow,
    classify_in,
    error_body,
    json_error,
    status_code_name,
)
from loraplex.http_errors import install_error_handlers as install_library_handlers

__all__ = ["error_body", "classify", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


class InvalidParamError(InvalidRequestError):
    """A request parameter is invalid (400); ``param`` names it in the error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def shown_id(value: str) -> str:
    """An id as an error message repeats it: quoted, and never much longer than a real one (a
    client that sends a 20 KB id gets a short answer)."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


def renamed(e: InvalidParamError, names: dict[str, str]) -> InvalidParamError:
    """An error about a completion field, naming the field another API's client sent instead
    (``names``: completion field -> that API's name)."""
    param = e.param or ""
    head, bracket, tail = param.partition("[")  # a batch's item: prompt[3]
    if head not in names:
        return e
    name = names[head] + bracket + tail
    message = str(e).replace(f"{param}:", f"{name}:").replace(f"{param} ", f"{name} ", 1)
    return InvalidParamError(message, name, e.code)


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


# this service's rows, tried before the library's (loraplex.http_errors.LIBRARY_ERRORS)
GATEWAY_ERRORS: tuple[ErrorRow, ...] = (
    (ModelNotFoundError, 404, "model_not_found"),
    (BatchNotFoundError, 404, "not_found"),
    (FilesQuotaError, 403, "files_quota_exceeded"),
    (BatchLimitError, 429, "batch_limit_exceeded"),
    (BatchStoreUnavailableError, 503, "service_unavailable"),
    (ResponseNotFoundError, 404, "not_found"),
    (ResponseStoreUnavailableError, 503, "service_unavailable"),
    (PayloadTooLargeError, 413, "request_too_large"),
    (SchedulerUnavailableError, 503, "scheduler_unavailable"),
    (RequestTimeoutError, 504, "timeout"),
    (ClientDisconnectedError, 499, "client_disconnected"),
)
ERROR_MAP: tuple[ErrorRow, ...] = (*GATEWAY_ERRORS, *LIBRARY_ERRORS)


def classify(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) of an exception raised inside the gateway."""
    if isinstance(exc, UpstreamError):
        code = status_code_name(exc.status)
        return exc.status, error_body(exc.status, str(exc), None, code)
    return classify_in(ERROR_MAP, exc)


def error_response(exc: BaseException) -> JSONResponse:
    return json_error(*classify(exc))


def install_error_handlers(app: FastAPI) -> None:
    install_library_handlers(app, classify=classify)
