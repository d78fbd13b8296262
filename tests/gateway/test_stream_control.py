"""Requests never hang: timeouts, client disconnects (-> CancelRequest on NATS), errors mid-stream;
and the operational routes (/health, /ready)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from loraplex.text.tokenizer import Tokenizer
from tests.gateway.conftest import ALICE, MODEL_ID, REPLY_TEXT, FakeScheduler, GatewayFactory, Plan

COMPLETIONS = "/v1/completions"


def body(**kw: object) -> dict:
    return {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 50, **kw}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


async def test_silence_times_out_with_504(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler
) -> None:
    scheduler.plan = lambda _: Plan(tokens=[], finish_reason=None)  # accepted, then nothing
    async with (
        gateway_factory(request_timeout_s=0.4) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        for stream in (False, True):
            t0 = time.monotonic()
            r = await http.post(COMPLETIONS, json=body(stream=stream))
            assert r.status_code == 504, r.text
            assert (
                r.json()["error"]["code"] == "timeout"
                and "within 0.4s" in r.json()["error"]["message"]
            )
            assert time.monotonic() - t0 < 3
            cancel = await scheduler.wait_cancel(scheduler.submits[-1].request_id)
            assert cancel.reason == "timed out in the gateway"


async def test_silence_mid_stream_ends_with_error_event(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.plan = lambda _: Plan(tokens=ids, finish_reason=None)
    async with (
        gateway_factory(request_timeout_s=0.4) as url,
        httpx.AsyncClient(base_url=url, headers=ALICE) as http,
    ):
        r = await http.post(COMPLETIONS, json=body(stream=True))
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["code"] == "timeout"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
        assert text == REPLY_TEXT
        await scheduler.wait_cancel(scheduler.submits[-1].request_id)


async def test_worker_error_mid_stream(
    gateway: str, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    scheduler.plan = lambda _: Plan(tokens=ids, chunk=2, error=(500, "decode worker died"))
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE) as http:
        events = sse_events((await http.post(COMPLETIONS, json=body(stream=True))).text)
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2]) == REPLY_TEXT
        assert (
            json.loads(events[-2])["error"]["message"] == "decode worker died"
            and events[-1] == "[DONE]"
        )
        r = await http.post(COMPLETIONS, json=body())
        assert r.status_code == 500 and r.json()["error"]["message"] == "decode worker died"


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_publishes_cancel(
    gateway: str, scheduler: FakeScheduler, stream: bool
) -> None:
    tokens = list(range(10, 110))
    scheduler.plan = lambda _: Plan(tokens=tokens, chunk=1, delay_s=0.05)
    async with httpx.AsyncClient(base_url=gateway, headers=ALICE, timeout=0.5) as http:
        if stream:
            async with http.stream(
                "POST", COMPLETIONS, json=body(stream=True, max_tokens=100)
            ) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # got a first chunk: hang up
        else:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(COMPLETIONS, json=body(max_tokens=100))
    rid = scheduler.submits[-1].request_id
    cancel = await scheduler.wait_cancel(rid)
    assert cancel.reason == "client disconnected"
    await asyncio.sleep(0.1)
    assert [c.request_id for c in scheduler.cancels].count(rid) == 1


async def test_a_client_gone_before_its_choices_are_queued_gets_no_more_of_them(
    gateway: str, scheduler: FakeScheduler
) -> None:
    """n=8 choices are 8 SUBMITs, one after another; the client hangs up while the first is
    being answered.  The gateway asks whether the client is still there before each SUBMIT:
    only the first is queued (and cancelled), never the other seven."""
    scheduler.reply_delay_s = 0.3
    scheduler.plan = lambda _: Plan(tokens=[], finish_reason=None)
    payload = json.dumps(body(n=8, max_tokens=20)).encode()
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {ALICE['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    deadline = time.monotonic() + 5.0
    while not scheduler.submits and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(scheduler.submits) == 1
    writer.close()  # while the scheduler takes 0.3 s to answer the first SUBMIT
    await writer.wait_closed()
    first = scheduler.submits[0].request_id
    await scheduler.wait_cancel(first)
    await asyncio.sleep(8 * scheduler.reply_delay_s)  # what seven more SUBMITs would take
    assert [s.request_id for s in scheduler.submits] == [first]


async def test_health_ready(gateway: str, scheduler: FakeScheduler) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        for _ in range(100):  # ready once the fake scheduler's broadcast arrives (every 0.2 s)
            ready = await http.get("/ready")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert ready.status_code == 200 and ready.json()["nats"] is True
    # /metrics is on its own listener: tests/gateway/test_metrics.py


async def test_nats_down_is_503_not_a_hang(gateway_factory: GatewayFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loraplex.tooling.servers import start_nats

    server = start_nats(tmp_path / "own-nats")
    try:
        async with (
            gateway_factory(nats_url=server.url, redis_url="", submit_timeout_s=0.5) as url,
            httpx.AsyncClient(base_url=url, headers=ALICE, timeout=10) as http,
        ):
            # no scheduler on this NATS: not ready, but connected
            assert (await http.get("/ready")).json()["nats"] is True
            server.stop()
            for _ in range(100):
                if (await http.get("/ready")).json()["nats"] is False:
                    break
                await asyncio.sleep(0.05)
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["nats"] is False
            t0 = time.monotonic()
            r = await http.post(COMPLETIONS, json=body())
            assert r.status_code == 503, r.text
            assert time.monotonic() - t0 < 3
            assert (await http.get("/health")).status_code == 200
    finally:
        server.stop()
