"""Slow and stalled clients cannot hold gateway connections (red team, 2026-12-08).

The gateway on real uvicorn with its own protocol (``header_timeout.TimedH11Protocol``, as
``python -m loraplex.gateway`` runs it) and its timeouts set small through the environment; raw
sockets send exactly what a slow client would.  Every wait is bounded (``BOUND_S``) so a
regression fails instead of hanging; nothing here asserts how fast an answer comes beyond that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

import tests.gateway.conftest as gateway_conftest
from loraplex.gateway.header_timeout import TimedH11Protocol
from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import (
    ALICE,
    ALICE_KEY,
    BOB,
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    GatewayFactory,
    Plan,
)
from tests.gateway.slow_client import (
    BOUND_S,
    answer,
    connect,
    head,
    multipart_parts,
    read_until_closed,
)

Start = Callable[..., AbstractAsyncContextManager[str]]
SMALL = {  # seconds / bytes per second / uploads: what each test starts from
    "LORAPLEX_GATEWAY_HEADER_TIMEOUT_S": "1",
    "LORAPLEX_GATEWAY_BODY_TIMEOUT_S": "1",
    "LORAPLEX_GATEWAY_BODY_MIN_RATE": "100",
    "LORAPLEX_GATEWAY_FILE_UPLOADS_PER_TENANT": "1",
}


@pytest.fixture
def timed_gateway(gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> Start:
    """``async with timed_gateway(env overrides, **settings) as url``: conftest's gateway (the
    production protocol) with the small timeouts."""
    assert gateway_conftest.TimedH11Protocol is TimedH11Protocol

    def start(
        env: dict[str, str] | None = None, **settings: object
    ) -> AbstractAsyncContextManager[str]:
        for name, value in {**SMALL, **(env or {})}.items():
            monkeypatch.setenv(name, value)
        return gateway_factory(**settings)

    return start


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the gateway and of uvicorn (which does not propagate to the root)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    yield caplog.records
    uvicorn_log.removeHandler(caplog.handler)


async def dribble(
    writer: asyncio.StreamWriter, pieces: Callable[[int], bytes], every_s: float
) -> None:
    """Write ``pieces(i)`` every ``every_s`` until the server closes (or the test ends)."""
    i = 0
    try:
        while not writer.is_closing():
            writer.write(pieces(i))
            await writer.drain()
            i += 1
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        pass


@asynccontextmanager
async def raw(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await connect(url)
    try:
        yield reader, writer
    finally:
        writer.close()


def assert_error(raw_answer: bytes, status: int, code: str) -> dict[str, object]:
    got, headers, body = answer(raw_answer)
    assert got == status, raw_answer[:300]
    assert headers.get("connection") == "close"
    error = body["error"]
    assert error["code"] == code and error["message"] and error["type"]
    return error


async def test_a_connection_that_sends_nothing_is_closed(timed_gateway: Start) -> None:
    async with timed_gateway() as url, raw(url) as (reader, _):
        assert await read_until_closed(reader) == b""


async def test_headers_sent_a_line_at_a_time_get_408(timed_gateway: Start) -> None:
    async with timed_gateway() as url, raw(url) as (reader, writer):
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n")
        slow = asyncio.create_task(dribble(writer, lambda i: f"X-Slow-{i}: 1\r\n".encode(), 0.2))
        try:
            assert_error(await read_until_closed(reader), 408, "request_timeout")
        finally:
            slow.cancel()


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(
    timed_gateway: Start,
) -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request
    async with timed_gateway() as url, raw(url) as (reader, writer):
        writer.write(head("GET", "/health"))
        top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
        assert top.startswith(b"HTTP/1.1 200")
        size = int(top.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(size), BOUND_S)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n")
        slow = asyncio.create_task(dribble(writer, lambda i: f"X-Slow-{i}: 1\r\n".encode(), 0.2))
        try:
            assert_error(await read_until_closed(reader), 408, "request_timeout")
        finally:
            slow.cancel()


async def test_a_declared_body_that_never_comes_gets_408(
    timed_gateway: Start, errors_logged: list[logging.LogRecord]
) -> None:
    async with timed_gateway() as url, raw(url) as (reader, writer):
        auth = f"Authorization: Bearer {ALICE_KEY}"  # without a key: a 401 at once (auth_first)
        writer.write(head("POST", "/v1/completions", "Content-Length: 100", auth))
        error = assert_error(await read_until_closed(reader), 408, "request_timeout")
        assert "0 bytes received" in str(error["message"])
    assert [r for r in errors_logged if r.levelno >= logging.ERROR] == []


async def test_a_trickled_body_gets_408(timed_gateway: Start) -> None:
    # one byte each 0.1 s: never a stall of the 1 s timeout, but far under 100 bytes/s
    async with timed_gateway() as url, raw(url) as (reader, writer):
        writer.write(
            head(
                "POST",
                "/v1/completions",
                f"Authorization: Bearer {ALICE_KEY}",
                "Content-Type: application/json",
                "Content-Length: 100000",
            )
        )
        slow = asyncio.create_task(dribble(writer, lambda _: b" ", 0.1))
        try:
            assert_error(await read_until_closed(reader), 408, "request_timeout")
        finally:
            slow.cancel()


@pytest.mark.parametrize("declared", [99_999_999_999, 3_000_000])
async def test_a_declared_length_over_the_limit_gets_413_from_the_headers(
    timed_gateway: Start, declared: int
) -> None:
    # the body timeout is long: the 413 must not wait for the body, nor for that timeout
    async with (
        timed_gateway({"LORAPLEX_GATEWAY_BODY_TIMEOUT_S": "120"}, max_body_bytes=64 * 1024) as url,
        raw(url) as (reader, writer),
    ):
        writer.write(
            head(
                "POST",
                "/v1/completions",
                f"Authorization: Bearer {ALICE_KEY}",
                "Content-Type: application/json",
                f"Content-Length: {declared}",
            )
            + b'{"model": "demo-base", "prompt": "hi", "max_to'
        )
        assert_error(await read_until_closed(reader), 413, "request_too_large")


async def test_a_stream_outlives_every_timeout_and_the_connection_serves_again(
    timed_gateway: Start, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.plan = lambda _: Plan(tokens=ids, chunk=1, delay_s=2.5 / len(ids))  # 2.5 s
    body = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 64, "stream": True}
    async with (
        timed_gateway() as url,
        httpx.AsyncClient(base_url=url, headers=ALICE, timeout=BOUND_S) as http,
    ):
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > len(ids) // 2
        again = await http.get("/v1/models")  # the same kept-alive connection
        assert again.status_code == 200


async def test_file_uploads_are_capped_per_tenant(timed_gateway: Start) -> None:
    start, end = multipart_parts("bnd")
    form = {"Content-Type": "multipart/form-data; boundary=bnd"}

    async def upload(headers: dict[str, str]) -> httpx.Response:
        data = start + b'{"custom_id": "a"}\n' + end
        return await http.post("/v1/files", content=data, headers={**headers, **form})

    async with (
        timed_gateway({"LORAPLEX_GATEWAY_BODY_TIMEOUT_S": "120"}) as url,
        httpx.AsyncClient(base_url=url, timeout=BOUND_S) as http,
        raw(url) as (reader, writer),
    ):
        # alice's first upload stalls half-way: it holds her one slot
        writer.write(
            head(
                "POST",
                "/v1/files",
                f"Authorization: Bearer {ALICE_KEY}",
                "Content-Type: multipart/form-data; boundary=bnd",
                "Content-Length: 1000000",
            )
            + start
            + b"x" * 1000
        )
        await writer.drain()
        r = await _until(lambda: upload(ALICE), lambda r: r.status_code == 429)
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.headers["connection"] == "close"
        assert (await upload(BOB)).status_code == 200  # other tenants: untouched
        writer.close()  # the stalled client leaves: alice's slot is hers again
        await _until(lambda: upload(ALICE), lambda r: r.status_code == 200)


async def test_an_unauthenticated_upload_is_refused_before_its_body(timed_gateway: Start) -> None:
    async with (
        timed_gateway({"LORAPLEX_GATEWAY_BODY_TIMEOUT_S": "120"}) as url,
        raw(url) as (reader, writer),
    ):
        writer.write(
            head(
                "POST",
                "/v1/files",
                "Content-Type: multipart/form-data; boundary=bnd",
                "Content-Length: 60000000",
            )
        )
        assert_error(await read_until_closed(reader), 401, "invalid_api_key")


@pytest.mark.parametrize("path", ["/v1/files", "/v1/adapters"])
async def test_a_stalled_upload_gets_408_not_500(
    timed_gateway: Start, errors_logged: list[logging.LogRecord], path: str
) -> None:
    start, _ = multipart_parts("bnd")
    async with timed_gateway() as url, raw(url) as (reader, writer):
        writer.write(
            head(
                "POST",
                path,
                f"Authorization: Bearer {ALICE_KEY}",
                "Content-Type: multipart/form-data; boundary=bnd",
                "Content-Length: 1000000",
            )
            + start
            + b"x" * 1000
        )
        assert_error(await read_until_closed(reader), 408, "request_timeout")
    assert [r for r in errors_logged if r.levelno >= logging.ERROR] == []


async def _until(call, done):  # type: ignore[no-untyped-def]
    """``await call()`` until ``done(result)``, within ``BOUND_S``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not done(result := await call()):
        assert loop.time() < deadline, f"never came: last {result.status_code} {result.text}"
        await asyncio.sleep(0.05)
    return result
