"""``Generation`` shows the worker's text (``TokenDelta.text``), placed by ``text_start``: a migrated
request's new worker replays every token and its text from the start, and the client gets each
character once.  No bus: deltas go straight into the request's queue."""

from __future__ import annotations

import asyncio
import time

from loraplex.gateway.generation import Generation, TextDelta
from loraplex.gateway.metrics import GatewayMetrics
from loraplex.gateway.streams import StreamMessage
from loraplex.protocol import TokenDelta
from loraplex.text.tokenizer import Tokenizer
from loraplex.token_logprobs import TokenLogprobs


def _generation(tokenizer: Tokenizer, deltas: list[TokenDelta]) -> Generation:
    queue: asyncio.Queue[StreamMessage] = asyncio.Queue()
    for d in deltas:
        queue.put_nowait(d)

    async def closed(_: Generation) -> None:
        return None

    return Generation(
        request_id="r",
        tenant="alice",
        prompt_ids=[1, 2, 3],
        queue=queue,
        tokenizer=tokenizer,
        timeout_s=1.0,
        metrics=GatewayMetrics(),
        on_close=closed,
        arrival=time.monotonic(),
    )


async def _read(gen: Generation) -> list[TextDelta]:
    out = []
    while (delta := await gen.next()) is not None:
        out.append(delta)
    return out


async def test_a_replayed_delta_adds_only_the_characters_not_yet_shown(
    tokenizer: Tokenizer,
) -> None:
    lps = [TokenLogprobs(t, -0.5, ((t, -0.5),)) for t in range(10, 16)]
    deltas = [
        TokenDelta("r", [10], "Hel", completion_tokens=1, logprobs=lps[0:1]),
        TokenDelta("r", [11], "lo", completion_tokens=2, text_start=3, logprobs=lps[1:2]),
        # the worker died; its replacement replays tokens 10..12 (the scheduler had 12, the
        # gateway not) and their text from character 0, then goes on
        TokenDelta("r", [10, 11, 12], "Hello, w", completion_tokens=3, logprobs=lps[0:3]),
        TokenDelta("r", [13], "orld", completion_tokens=4, text_start=8, logprobs=lps[3:4]),
        # a token whose text is held back (an incomplete character), then released with the next
        TokenDelta("r", [14], "", completion_tokens=5, text_start=12, logprobs=lps[4:5]),
        TokenDelta("r", [15], "!é", "length", completion_tokens=6, text_start=12, logprobs=lps[5:]),
    ]
    gen = _generation(tokenizer, deltas)
    got = await _read(gen)
    await gen.aclose()
    assert [d.text for d in got] == ["Hel", "lo", ", w", "orld", "!é"]
    assert [d.finish_reason for d in got] == [None, None, None, None, "length"]
    assert gen.completion_tokens == 6 and gen.finish_reason == "length"
    assert gen.logprobs is not None
    assert [i.token for i in gen.logprobs] == [tokenizer.decode([t], False) for t in range(10, 16)]


async def test_a_replay_from_a_worker_that_restarted_from_the_first_token(
    tokenizer: Tokenizer,
) -> None:
    """Text overlapping part of a delta keeps only its new tail; a wholly known one adds none."""
    deltas = [
        TokenDelta("r", [10, 11, 12], "abcdef", completion_tokens=3),
        TokenDelta("r", [10, 11], "abcd", completion_tokens=2),
        TokenDelta("r", [12, 13], "efgh", completion_tokens=4, text_start=4),
        TokenDelta("r", [14], "ij", "stop", completion_tokens=5, text_start=8),
    ]
    gen = _generation(tokenizer, deltas)
    first = await gen.next()
    assert first is not None
    assert await gen.collect(first) == "abcdefghij"
    await gen.aclose()
    assert gen.completion_tokens == 5 and gen.finish_reason == "stop"


async def test_a_lost_delta_is_repaired_from_the_last_one(tokenizer: Tokenizer) -> None:
    """Core NATS is at-most-once: a delta lost on the way (here tokens 11-12, "lo, ") leaves a
    gap; later text is held back, and the last delta's full text and count fill it."""
    deltas = [
        TokenDelta("r", [10], "Hel", completion_tokens=1),
        TokenDelta("r", [13], "wor", completion_tokens=4, text_start=7),  # after the gap
        TokenDelta(
            "r", [14], "ld", "length", completion_tokens=5, text_start=10, full_text="Hello, world"
        ),
    ]
    gen = _generation(tokenizer, deltas)
    out = await _read(gen)
    assert "".join(d.text for d in out) == "Hello, world"
    assert gen.completion_tokens == 5 and gen.finish_reason == "length"


async def test_received_token_ids_are_kept_by_index_and_dropped_after_a_lost_delta(
    tokenizer: Tokenizer,
) -> None:
    """What a gateway resubmits to a new scheduler leader: the ids of every token received, a
    replay counted once; after a lost delta (a gap) it no longer knows them all."""
    whole = _generation(tokenizer, [
        TokenDelta("r", [10], "a", completion_tokens=1),
        TokenDelta("r", [11, 12], "bc", completion_tokens=3, text_start=1),
        TokenDelta("r", [10, 11, 12, 13], "abcd", completion_tokens=4),  # a migrated replay
    ])  # fmt: skip
    for _ in range(3):
        await whole.next()
    assert whole.received_token_ids == [10, 11, 12, 13] and whole.completion_tokens == 4
    gap = _generation(tokenizer, [
        TokenDelta("r", [10], "a", completion_tokens=1),
        TokenDelta("r", [12], "c", completion_tokens=3, text_start=2),  # token 2's delta lost
        TokenDelta("r", [13], "d", "length", completion_tokens=4, text_start=3, full_text="abcd"),
    ])  # fmt: skip
    await gap.next()
    assert gap.received_token_ids == [10]
    await _read(gap)
    assert gap.received_token_ids is None  # the ids are no longer all known
