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


@pytest.mark.parametrize("status", [400, 404, 413, 429, 503])
def test_an_upstream_status_gets_a_code(status):
    """A worker's error (a LoRAX merge of adapters whose ranks differ, say) names no code of
    its own: the body's ``code`` comes from its status, never null (clients branch on it)."""
    from loraplex.gateway.errors import RequestFailedError

    got, body = classify(RequestFailedError(status, "cannot merge adapters a, b"))
    assert got == status and body["error"]["code"]


async def test_starlette_errors_get_a_code():
    """FastAPI's own errors (its 400 when a body cannot be parsed, a 405) and a body nested too
    deep to parse are OpenAI bodies with a code, through the one table's handlers."""
    import httpx
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    from loraplex.http_errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    async def x(body: dict) -> dict:
        return body

    @app.post("/parse")
    async def parse() -> None:
        raise HTTPException(400, "There was an error parsing the body")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        deep = await c.post("/x", content=b"[" * 100_000 + b"]" * 100_000)
        unparsed = await c.post("/parse")
        wrong = await c.get("/x")
    assert deep.status_code == 400 and deep.json()["error"]["code"]
    assert unparsed.status_code == 400 and unparsed.json()["error"]["code"] == "invalid_request"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_a_message_that_quotes_a_huge_input_is_cut():
    """An error repeats what the client sent (a 100,000-character adapter name, a 5,000-digit
    logit_bias key): the answer stays short, and says how long the message was."""
    from loraplex.http_errors import MAX_MESSAGE, error_body

    body = error_body(400, "no adapter named " + "x" * 100_000, "p" * 5000, "not_found")["error"]
    assert len(body["message"]) <= MAX_MESSAGE and "100017 characters" in body["message"]
    assert body["message"].startswith("no adapter named xxx") and len(body["param"]) == 200
    assert error_body(400, "short", "model")["error"]["message"] == "short"
