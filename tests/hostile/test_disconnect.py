"""Clients that disconnect mid-stream stop their generation within about one engine step.

Counted on the bus, from what the workers actually stream to the gateway, not from what the client
read.  Each closed stream must produce a cancel that reaches its worker, and the worker may stream
little more than the step in progress after that cancel.
"""

from __future__ import annotations

import time

from tests.hostile.bus_watch import BusWatch
from tests.hostile.harness import BETA, HostileStack, other

STREAMS = 4
MAX_TOKENS = 1500  # far more than the client waits for: only a cancel ends these requests early
READ_CHUNKS = 3
# After the cancel reached the worker's subject (as this watcher saw it): the step in progress,
# at most 2 tokens on a quiet box.  On a box shared with other jobs, the watcher's and the worker's
# event loops are starved in turn and the count drifts by a few steps (3-9 seen with two CPU
# burners beside the stack), hence the slack; the bug it guards against is hundreds of tokens.
AFTER_CANCEL = 16
# After the client closed, whatever the cancel's trip through the gateway and scheduler costs on a
# loaded box.  Only a sanity bound: the bug it guards against let requests run on for thousands
# of tokens.
AFTER_CLOSE = 256


# This was an intermittent failure (about one full hostile run in three): the gateway sent no
# cancel for some closed streams, which ran to max_tokens.  The cause was Python 3.11's
# asyncio.wait_for, which drops a cancel that arrives as the awaited token does: the stream's
# reader task read on, and the response waited for it before publishing the cancel.  Services now
# wait through loraplex.timeouts.wait_for (tests/test_timeouts.py).
async def test_disconnected_streams_stop_generating(hs: HostileStack):
    async with BusWatch.connect(hs.stack.urls["nats"]) as bus:
        client = hs.async_openai(BETA)
        streams = []
        for i in range(STREAMS):
            streams.append(
                await client.completions.create(
                    model=hs.model_id,
                    prompt=f"{i} Hello there",
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
            )
        for stream in streams:
            n = 0
            async for _ in stream:
                n += 1
                if n == READ_CHUNKS:
                    break
        at_close = {}
        for stream in streams:
            await stream.close()
            at_close.update(bus.tokens)
        closed_at = time.monotonic()
        ours = set(at_close)
        await bus.wait_for(
            lambda: ours <= set(bus.tokens_at_cancel),
            f"a cancel for every closed stream (at close: {at_close})",
            details=lambda: (
                f"gateway cancels: {sorted(bus.asked_to_cancel)}, cancels to workers: "
                f"{bus.tokens_at_cancel}, tokens: {bus.tokens}, finished: {bus.finished}"
            ),
        )
        await bus.quiet(for_s=1.0)
        await bus.wait_for(lambda: bus.idle_since(closed_at + 1.0), "every worker to be idle")
    assert len(ours) == STREAMS, f"expected {STREAMS} streams on the bus, saw {at_close}"
    final = {rid: bus.tokens[rid] for rid in ours}
    assert max(final.values()) < MAX_TOKENS, f"a request ran to the end: {final}"
    after_cancel = {rid: final[rid] - bus.tokens_at_cancel[rid] for rid in ours}
    assert max(after_cancel.values()) <= AFTER_CANCEL, (
        f"tokens streamed after the worker was told to cancel, per request: {after_cancel}"
    )
    after_close = {rid: final[rid] - at_close[rid] for rid in ours}
    assert max(after_close.values()) <= AFTER_CLOSE, (
        f"tokens generated after the clients left, per request: {after_close}"
    )
    hs.assert_healthy(other(BETA))
    hs.assert_healthy(BETA)
