"""A request's queue joins the deltas its reader has not read yet (``request_stream.py``): a slow
client gets bigger chunks of the same answer, and its backlog costs about what the completion
is, not a message object per delta.  Deltas straight through ``StreamRouter`` first, then the
whole gateway (real uvicorn and NATS, conftest.py's fake scheduler) with a client that stalls."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import tracemalloc

from loraplex.gateway.generation import Generation, TextDelta
from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.pending_delta import DELTA_FIELDS, LOGPROB_FIELDS
from loraplex.gateway.streams import StreamMessage, StreamRouter
from loraplex.protocol import RequestError, TokenDelta, decode, encode
from loraplex.text.tokenizer import Tokenizer
from loraplex.token_logprobs import TokenLogprobs
from tests.gateway.conftest import (
    ALICE_KEY,
    MODEL_ID,
    REPLY_TEXT,
    FakeScheduler,
    Plan,
    openai_client,
)
from tests.gateway.raw_client import BOUND_S, read_events, unread_stream


def _lp(token: int, k: int = 3, rank: int | None = 1) -> TokenLogprobs:
    top = tuple((token + j, -0.5 - j / 4) for j in range(k))
    return TokenLogprobs(token, -0.25 - token / 1000, top, rank)


def _delta(ids: list[int], text: str, done: int, start: int, **more: object) -> TokenDelta:
    """Tokens ``ids`` ending at completion token ``done``, text at character ``start``."""
    lps = [_lp(t, rank=None if t % 3 == 0 else t) for t in ids]
    return TokenDelta("r", ids, text, completion_tokens=done, text_start=start, logprobs=lps,
                      prompt_tokens=3, **more)  # type: ignore[arg-type]  # fmt: skip


# Everything a reader repairs: text held back, a migrated worker's replay from token 0, a lost
# delta (a gap) and the last delta's full text, cached tokens on some deltas only.
STORY = [
    _delta([10], "Hel", 1, 0, prompt_logprobs=[_lp(2), _lp(3)]),
    _delta([11], "lo", 2, 3, cached_tokens=2),
    _delta([12], "", 3, 5),  # an incomplete character: its text comes with the next
    _delta([13], ", wé", 4, 5),
    _delta([10, 11, 12, 13, 14], "Hello, wéor", 5, 0),  # the new worker replays from token 0
    _delta([15], "ld", 6, 11),
    # token 16 ("!") was lost on the way
    _delta([17], " x", 8, 14, cached_tokens=1),
    _delta([18], "y", 9, 16),
    _delta([19], "z", 10, 17, finish_reason="length", full_text="Hello, wéorld! xyz"),
]


async def _reader(queue: asyncio.Queue[StreamMessage], tokenizer: Tokenizer) -> Generation:
    async def closed(_: Generation) -> None:
        return None

    return Generation(
        request_id="r", tenant="alice", prompt_ids=[1, 2, 3], queue=queue, tokenizer=tokenizer,
        timeout_s=1.0, metrics=GatewayMetrics(), on_close=closed, arrival=time.monotonic(),
    )  # fmt: skip


async def _read_all(gen: Generation) -> list[TextDelta]:
    out = []
    while (d := await gen.next()) is not None:
        out.append(d)
    return out


def _seen(gen: Generation, out: list[TextDelta]) -> tuple[object, ...]:
    """What a client of ``gen`` is shown, whatever the chunks."""
    infos = gen.logprobs or []
    return (
        "".join(d.text for d in out),
        [(i.token, i.logprob, i.top, i.rank) for i in infos],
        [t for d in out for t in d.token_ids],
        gen.received_token_ids, gen.completion_tokens, gen.finish_reason, gen.cached_tokens,
        [(i.token, i.logprob) for i in gen.prompt_logprobs() or []],
    )  # fmt: skip


async def test_a_reader_behind_gets_the_same_answer_in_fewer_chunks(tokenizer: Tokenizer) -> None:
    plain: asyncio.Queue[StreamMessage] = asyncio.Queue()
    router = StreamRouter()
    joined = router.open("r", "alice")
    for d in STORY:
        plain.put_nowait(d)
        await router.dispatch(decode(encode(d), TokenDelta))  # as the subscription gets it
    # joined: 1-4, the replay with 6, 8 with 9 (the gap before 8 kept), the last one alone
    assert joined.qsize() == 4 and joined.joined == 5
    one_by_one, behind = await _reader(plain, tokenizer), await _reader(joined, tokenizer)
    expected, got = await _read_all(one_by_one), await _read_all(behind)
    assert _seen(behind, got) == _seen(one_by_one, expected)
    assert _seen(behind, got)[0] == "Hello, wéorld! xyz"
    assert len(got) < len(expected)
    assert router.unread("alice") == joined.unread == 0


async def test_the_joined_delta_is_the_deltas_it_stands_for() -> None:
    router = StreamRouter()
    queue = router.open("r")
    parts = [_delta([10 + i], f"{i:02}", i + 1, 2 * i, cached_tokens=i % 2) for i in range(50)]
    for d in parts:
        await router.dispatch(d)
    assert queue.qsize() == 1
    one = await queue.get()
    assert isinstance(one, TokenDelta)
    assert one.token_ids == [t for d in parts for t in d.token_ids]
    assert one.text == "".join(d.text for d in parts) and one.text_start == 0
    assert one.logprobs == [lp for d in parts for lp in d.logprobs or []]
    assert (one.completion_tokens, one.cached_tokens, one.finish_reason) == (50, 1, None)


async def test_nothing_is_joined_across_a_gap_a_replay_an_error_or_the_end() -> None:
    router = StreamRouter()
    queue = router.open("r")
    apart = [
        _delta([10], "a", 1, 0),
        _delta([12], "c", 3, 2),  # token 11 lost: a gap
        _delta([13], "d", 4, 4),  # text 3 lost although the tokens follow: a gap too
        _delta([10, 11, 12, 13, 14], "abcde", 5, 0),  # a replay
        dataclasses.replace(_delta([15], "f", 6, 5), logprobs=None),  # logprobs on one side only
        _delta([16], "g", 7, 6, finish_reason="stop", full_text="abcdefg"),
        _delta([17], "h", 8, 7),  # after the end (a duplicate, a late one)
        RequestError("r", 500, "worker died"),
        _delta([18], "i", 9, 8),
        _delta([19], "j", 10, 9, prompt_logprobs=[_lp(2)]),
    ]
    for m in apart:
        await router.dispatch(m)
    assert queue.qsize() == len(apart) and queue.joined == 0
    assert [queue.get_nowait() for _ in apart] == apart


async def test_a_reader_that_keeps_up_gets_every_delta_as_sent() -> None:
    router = StreamRouter()
    queue = router.open("r")
    for i in range(20):
        d = _delta([10 + i], "x", i + 1, i)
        await router.dispatch(d)
        assert await queue.get() is d
    assert queue.joined == 0 and router.unread() == 0


async def test_a_backlog_costs_about_what_the_completion_is() -> None:
    """8,000 one-token deltas with 5 alternatives each, never read: as they came they held
    about 1.3 kB a token (the red team's 12 MB a request); joined, about 130 bytes (8 a token
    id, 16 an alternative), and the router's own count of it is close."""
    tokens = 8_000
    router = StreamRouter()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        router.open("r", "alice")
        for i in range(tokens):
            t = 100 + i % 900
            lps = [TokenLogprobs(t, -0.5, tuple((t + j, -1.0 - j) for j in range(5)), 1)]
            await router.dispatch(
                TokenDelta(
                    "r", [t], " tok", completion_tokens=i + 1, text_start=4 * i, logprobs=lps
                )  # fmt: skip
            )
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held / tokens < 250, f"{held / tokens:.0f} bytes a token"
    counted = router.unread("alice")
    assert held / 2 < counted < held * 2


def test_the_join_knows_every_field_of_a_delta() -> None:
    """A field added to TokenDelta or TokenLogprobs must be carried by ``PendingDelta`` (or the
    join would drop it): this fails until ``pending_delta.py`` is taught the new one."""
    assert {
        "request_id", "token_ids", "text", "finish_reason", "prompt_tokens", "completion_tokens",
        "logprobs", "prompt_logprobs", "cached_tokens", "text_start", "full_text",
    } == DELTA_FIELDS  # fmt: skip
    assert {"token_id", "logprob", "top", "rank"} == LOGPROB_FIELDS


def _choices(events: list[str]) -> dict[int, tuple[str, list[str], list[int], str | None]]:
    """Per choice: its text, logprobs tokens, text offsets and finish reason, whatever the
    chunks."""
    seen: dict[int, tuple[str, list[str], list[int], str | None]] = {}
    for e in events:
        for c in json.loads(e)["choices"]:
            text, tokens, offsets, finish = seen.get(c["index"], ("", [], [], None))
            lp = c.get("logprobs") or {"tokens": [], "text_offset": []}
            seen[c["index"]] = (
                text + c["text"], tokens + lp["tokens"], offsets + lp["text_offset"],
                c.get("finish_reason") or finish,
            )  # fmt: skip
    return seen


async def test_a_client_that_stops_reading_then_reads_gets_the_same_answer(
    gateway_factory, scheduler: FakeScheduler, tokenizer: Tokenizer
) -> None:  # type: ignore[no-untyped-def]
    """End to end: two choices, each 6,000 tokens with logprobs (more than the sockets hold);
    the client reads nothing until every delta has come, then reads it all: each choice's text,
    tokens and offsets are those a client reading along got, in fewer chunks."""
    ids = tokenizer.encode(REPLY_TEXT, add_special_tokens=False)
    repeat, chunk = 600, 8
    scheduler.plan = lambda req: Plan(tokens=ids * repeat, chunk=chunk)
    body = {"n": 2, "logprobs": 2, "max_tokens": 64, "seed": 1}
    async with gateway_factory() as url:
        async with openai_client(url) as oai:
            stream = await oai.completions.create(model=MODEL_ID, prompt="hi", stream=True,
                                                  **body)  # fmt: skip
            along = _choices([c.model_dump_json() async for c in stream])
        sock = await unread_stream(int(url.rsplit(":", 1)[1]), ALICE_KEY, **body)
        try:
            await _all_sent(scheduler, submits=4)
            events = await read_events(sock)
        finally:
            sock.close()
    assert events[-1] == "[DONE]"
    behind = _choices(events[:-1])
    assert behind == along and sorted(behind) == [0, 1]
    assert behind[0][0] == REPLY_TEXT * repeat and behind[0][3] == "stop"
    assert len(behind[0][1]) == len(ids) * repeat
    assert len(events) < len(ids) * repeat * 2 / chunk  # joined: fewer chunks than deltas


async def _all_sent(scheduler: FakeScheduler, submits: int) -> None:
    """Until the fake "workers" have sent every delta of ``submits`` requests."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while len(scheduler.submits) < submits or any(
        t.get_coro().__qualname__ == "FakeScheduler._stream" for t in scheduler._tasks
    ):
        assert loop.time() < deadline, "the fake scheduler did not finish"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # their last deltas reach the gateway
