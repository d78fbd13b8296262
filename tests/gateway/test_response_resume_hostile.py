"""Hostile query values on the resume of a streamed background response (``GET
/v1/responses/{id}?stream=true&starting_after=N``): a bad ``starting_after`` or ``stream`` is a 400
naming it, an id this tenant was never given (malformed, unknown, another tenant's) a 404 like any
other, each with an OpenAI error body; never a 5xx.  What a client may send (-1, the last sequence
number or past it, a repeated parameter, one the route does not know) streams the events after N
and ends, even while the response still runs.  A hang fails on the client's timeout.  The gateway
on real NATS with the fake scheduler, as the other background tests run it; ids and resumes on
both response stores (memory, Redis)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import ALICE, BOB, MODEL_ID, REPLY_TEXT, FakeScheduler, GatewayFactory
from tests.gateway.test_errors import assert_error
from tests.gateway.test_responses_background import slow

STREAMED = {"model": MODEL_ID, "input": "Hi", "background": True, "stream": True}
STORES = {"memory": {"redis_url": ""}, "redis": {}}


@asynccontextmanager
async def alice_on(gateway_factory: GatewayFactory, store: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (as alice, 10 s timeout) of a gateway keeping responses in ``store``."""
    async with (
        gateway_factory(max_model_len=4096, **STORES[store]) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE, timeout=10) as http,
    ):
        yield http


def events_of(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


async def finished(http: httpx.AsyncClient) -> tuple[str, int]:
    """A streamed background response, read to its end: its id and its last sequence number."""
    r = await http.post("/v1/responses", json=STREAMED)
    events = events_of(r.text)
    assert r.status_code == 200 and events[-1]["type"] == "response.completed", r.text
    return events[0]["response"]["id"], events[-1]["sequence_number"]


def assert_refused(r: httpx.Response, param: str) -> None:
    """A 400 whose OpenAI error body names ``param`` (the route's query parameter)."""
    err = assert_error(r, 400, code="invalid_value")
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err  # the field alone, as OpenAI names it: not "query.<name>"


BAD_STARTING_AFTER = [
    "-2",
    str(10**30),
    str(2**31 + 1),  # the route's bound is 2**31
    "9" * 5000,  # past pydantic's integer size
    "abc",
    "1.5",
    "",
    "NaN",
    "inf",
    "0x10",
    "%ff",  # not UTF-8
    "%EF%BC%91",  # a full-width digit one
    "1&starting_after=abc",  # repeated: the last one counts
]


async def test_a_hostile_starting_after_is_a_400_naming_it(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with alice_on(gateway_factory, "memory") as http:
        rid, _ = await finished(http)
        for value in BAD_STARTING_AFTER:
            for stream in ("true", "false"):  # checked even where unused
                r = await http.get(f"/v1/responses/{rid}?stream={stream}&starting_after={value}")
                assert_refused(r, "starting_after")


async def test_a_hostile_stream_is_a_400_naming_it(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with alice_on(gateway_factory, "memory") as http:
        rid, _ = await finished(http)
        for value in ("maybe", "garbage", "", "2", "%00", "true&stream=perhaps"):
            r = await http.get(f"/v1/responses/{rid}?stream={value}&starting_after=0")
            assert_refused(r, "stream")


def never_given(rid: str) -> list[str]:
    """Ids alice was never given: malformed ones (never looked up) and a well-formed one."""
    hex32 = rid.removeprefix("resp_")
    return [
        "nope",
        "resp_" + hex32[:-1],
        rid + "0",
        "resp_" + "g" * 32,
        "RESP_" + hex32,
        "resp_%00",
        "x" * 2000,
        "resp_" + secrets.token_hex(16),
    ]


@pytest.mark.parametrize("store", STORES)
async def test_an_id_not_given_to_this_tenant_is_a_404(
    store: str, gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with alice_on(gateway_factory, store) as http:
        rid, last = await finished(http)
        for other in never_given(rid):
            r = await http.get(f"/v1/responses/{other}?stream=true&starting_after=-1")
            assert_error(r, 404, code="not_found")
            assert len(r.text) < 400, r.text  # a long id is not echoed whole
        # Another tenant's id answers exactly as one never issued: ids reveal nothing.
        unknown = "resp_" + secrets.token_hex(16)
        for rid_, headers in ((rid, BOB), (unknown, ALICE)):
            r = await http.get(f"/v1/responses/{rid_}?stream=true", headers=headers)
            err = assert_error(r, 404, code="not_found")
            assert err["message"] == f"Response with id {rid_!r} not found.", err
        # ... while it is there for its own tenant.
        r = await http.get(f"/v1/responses/{rid}?stream=true&starting_after={last - 1}")
        assert r.status_code == 200 and [e["sequence_number"] for e in events_of(r.text)] == [last]


@pytest.mark.parametrize("store", STORES)
async def test_what_a_client_may_send_resumes_and_ends(
    store: str, gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.says(REPLY_TEXT, chunk=2)
    async with alice_on(gateway_factory, store) as http:
        rid, last = await finished(http)
        # query -> the first sequence number it streams (the rest follow up to ``last``)
        cases = {
            "starting_after=-1": 0,
            f"starting_after={last - 1}": last,
            f"starting_after={last}": last + 1,  # nothing: it ends, with no event
            f"starting_after={2**31}": last + 1,
            "starting_after=abc&starting_after=3": 4,  # repeated: the last one counts
            "starting_after=3&include[]=garbage&include=%ff%fe&foo=bar": 4,  # unknown: ignored
        }
        for query, first in cases.items():
            r = await http.get(f"/v1/responses/{rid}?stream=true&{query}")
            assert r.status_code == 200, (query, r.text)
            seqs = [e["sequence_number"] for e in events_of(r.text)]
            assert seqs == list(range(first, last + 1)), query
        r = await http.get(f"/v1/responses/{rid}?stream=true&stream=false")  # the last counts
        assert r.status_code == 200 and r.json()["status"] == "completed"


async def test_a_resume_past_the_end_of_a_running_response_ends_with_it(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    """On the generating replica (its events in memory) and on another one (the Redis log)."""
    slow(scheduler, tokenizer, delay_s=0.1)  # still generating when the resumes come
    shared = {"max_model_len": 4096, "redis_prefix": f"resume-{secrets.token_hex(4)}"}
    async with (
        gateway_factory(**shared) as here,
        gateway_factory(**shared) as there,
        httpx.AsyncClient(headers=ALICE, timeout=10) as http,
        http.stream("POST", f"{here}/v1/responses", json=STREAMED) as created,
    ):
        lines = created.aiter_lines()
        while not (line := await anext(lines)).startswith("data: "):
            pass
        rid = json.loads(line[6:])["response"]["id"]
        assert (await http.get(f"{there}/v1/responses/{rid}")).json()["status"] == "in_progress"
        for url in (here, there):
            r = await http.get(f"{url}/v1/responses/{rid}?stream=true&starting_after={2**31}")
            assert r.status_code == 200 and events_of(r.text) == [], url
        r = await http.get(f"{here}/v1/responses/{rid}")
        assert r.json()["status"] == "completed"  # they ended because the response did
