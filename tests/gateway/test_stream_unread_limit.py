"""What one tenant's clients leave unread is bounded (``StreamRouter.unread_limit``): past the
limit its request with the most unread fails with a 429 its client reads after the text it got,
and is cancelled upstream; the tenant's other requests, and other tenants, go on untouched.

The router alone first, then the whole gateway on real uvicorn and NATS (the fake scheduler of
conftest.py) with a raw-socket client that never reads its stream."""

from __future__ import annotations

import asyncio
import json

from openai import AsyncOpenAI

from loraplex.gateway.streams import UNREAD_CODE, UNREAD_REASON, StreamRouter
from loraplex.protocol import RequestError, TokenDelta
from loraplex.text.tokenizer import Tokenizer
from loraplex.token_logprobs import TokenLogprobs
from tests.gateway.conftest import ALICE_KEY, MODEL_ID, REPLY_TEXT, FakeScheduler, Plan
from tests.gateway.raw_client import BOUND_S, read_events, unread_stream


def _delta(rid: str, i: int) -> TokenDelta:
    """Token ``i`` of request ``rid``, with 5 alternatives (about 130 bytes unread)."""
    lps = [TokenLogprobs(100 + i, -0.5, tuple((100 + i + j, -1.0 - j) for j in range(5)), 1)]
    return TokenDelta(rid, [100 + i], "ab", completion_tokens=i + 1, text_start=2 * i, logprobs=lps)


class Cancels:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, request_id: str, reason: str) -> None:
        self.asked.append((request_id, reason))


async def test_the_request_with_the_most_unread_fails_and_the_others_go_on() -> None:
    cancels = Cancels()
    router = StreamRouter(unread_limit=64 * 1024)
    router.bind_cancel(cancels)
    stalled, slow = router.open("stalled", "alice"), router.open("slow", "alice")
    bob = router.open("bob", "bob")
    i = 0
    while not cancels.asked:  # alice's "stalled" client reads nothing, "slow" a little
        assert i < 2000, "the limit never struck"
        await router.dispatch(_delta("stalled", i))
        if i < 100:
            await router.dispatch(_delta("slow", i))
            await router.dispatch(_delta("bob", i))
        i += 1
    assert i > 64 * 1024 / 200  # the limit counts bytes, not messages
    assert cancels.asked == [("stalled", UNREAD_REASON)] and router.unread_failed == 1
    for late in range(i, i + 50):  # still on their way: dropped, not kept nor orphans
        await router.dispatch(_delta("stalled", late))
    error = stalled.get_nowait()
    assert isinstance(error, RequestError) and error.code == UNREAD_CODE
    assert "did not read" in error.message and stalled.empty()
    assert router.orphans == 0 and cancels.asked == [("stalled", UNREAD_REASON)]
    for q, name in ((slow, "slow"), (bob, "bob")):  # untouched: all 100 tokens, joined
        got = q.get_nowait()
        assert isinstance(got, TokenDelta) and got.request_id == name
        assert len(got.token_ids) == 100 and q.empty()
    assert router.unread("bob") == 0
    assert router.unread("alice") < 64 * 1024
    for late in range(100, 2000):  # now "slow" stalls too: the next over the limit
        await router.dispatch(_delta("slow", late))
        if len(cancels.asked) > 1:
            break
    assert cancels.asked[1:] == [("slow", UNREAD_REASON)] and router.unread_failed == 2
    for rid in ("stalled", "slow", "bob"):
        router.close(rid)
    assert router.unread("alice") == router.unread("bob") == 0


async def test_a_reader_that_keeps_up_is_never_limited_however_long_its_answer() -> None:
    cancels = Cancels()
    router = StreamRouter(unread_limit=4096)
    router.bind_cancel(cancels)
    queue = router.open("r", "alice")
    for i in range(5000):
        await router.dispatch(_delta("r", i))
        if i % 3 == 2:  # the reader takes what came every third delta
            while not queue.empty():
                assert isinstance(queue.get_nowait(), TokenDelta)
    assert cancels.asked == [] and router.unread_failed == 0


async def test_a_client_that_never_reads_is_cut_off_and_other_tenants_are_served(
    gateway_factory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    # alice's "worker" paced as a real one (a burst faster than the gateway turns deltas into
    # events would back up in the gateway whoever reads)
    paced = Plan(tokens=ids * 3000, chunk=64, delay_s=0.002)
    scheduler.plan = lambda req: paced if req.tenant == "alice" else Plan(tokens=ids, chunk=1)
    async with gateway_factory(stream_buffer_mb=0.25) as url:
        sock = await unread_stream(int(url.rsplit(":", 1)[1]), ALICE_KEY, logprobs=5)
        try:
            cancel = await _cancel_of_alice(scheduler)
            assert cancel.reason == UNREAD_REASON
            bob = AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-bob-secret", max_retries=0)
            async with bob:
                stream = await bob.completions.create(
                    model=MODEL_ID, prompt="hi", max_tokens=64, stream=True, logprobs=5
                )
                assert "".join([c.choices[0].text async for c in stream]) == REPLY_TEXT
            events = await read_events(sock)
        finally:
            sock.close()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "rate_limit_exceeded" and "did not read" in error["message"]
    text = "".join(c["text"] for e in events[:-2] for c in json.loads(e)["choices"])
    assert text and (REPLY_TEXT * 3000).startswith(text)  # what it got before: whole, in order


async def _cancel_of_alice(scheduler: FakeScheduler):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not any(s.tenant == "alice" for s in scheduler.submits):
        assert loop.time() < deadline, "alice's request never came"
        await asyncio.sleep(0.02)
    rid = next(s.request_id for s in scheduler.submits if s.tenant == "alice")
    return await scheduler.wait_cancel(rid, timeout=BOUND_S)
