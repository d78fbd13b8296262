"""The gateway and the adapter-store answer the same exception with the same status, type and code
(one table: loraplex.http_errors)."""

from __future__ import annotations

import pytest

from loraplex.adapters.errors import StoreUnavailableError, UploadLimitError
from loraplex.errors import AdapterNotFoundError, InvalidRequestError
from loraplex.gateway.errors import classify
from loraplex.http_errors import LIBRARY_ERRORS, classify_in
from loraplex.tenants import AuthenticationError


@pytest.mark.parametrize(
    "exc",
    [
        AuthenticationError("bad key"),
        StoreUnavailableError("redis down"),
        UploadLimitError("too many"),
        AdapterNotFoundError("no such adapter"),
        InvalidRequestError("bad"),
    ],
)
def test_both_services_answer_alike(exc):
    assert classify(exc) == classify_in(LIBRARY_ERRORS, exc)


def test_the_types_are_openai_ones():
    assert classify(AuthenticationError("x"))[1]["error"]["type"] == "authentication_error"
    status, body = classify_in(LIBRARY_ERRORS, StoreUnavailableError("x"))
    assert status == 503 and body["error"]["type"] == "service_unavailable_error"
    assert body["error"]["code"] == "store_unavailable"


def test_an_unknown_error_is_a_500_without_its_text():
    status, body = classify_in(LIBRARY_ERRORS, RuntimeError("secret detail"))
    assert status == 500 and "secret" not in body["error"]["message"]
