"""A worker dying across a scheduler failover: its streams migrate instead of failing.

The new leader's own token log of an adopted request starts at the takeover; what came before
reaches it with the gateway's resubmission (``SubmitRequest.received_token_ids``).  Two ways the
worker dies: SIGKILLed together with the leader (the gateway has every token it made), and after
the new leader adopted its requests (the gateway's ids joined to the reports heard since the
takeover).  Either way every stream ends with exactly its tokens, from a worker that was handed
the tokens so far.  Real nats-server, redis-server and scheduler processes; the workers generate
by fiat (``replica_helpers.TokenWorker``) and the gateway side is the real ``Resubmitter``.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from loraplex.bus import Bus
from tests.scheduler.waiting import until

from .replica_helpers import (
    FakeGateway,
    TokenWorker,
    start_scheduler,
    stop_schedulers,
    token_of,
    wait_log,
)

TOKENS = 200  # per request: 10 s at 50 ms a token, so they stream through both failures
STREAMS = 4
HEARTBEAT_TIMEOUT = "2"


@pytest.mark.parametrize("worker_dies", ["with-the-leader", "after-the-adoption"])
async def test_streams_migrate_when_their_worker_dies_across_a_failover(
    nats_url, redis_url, tmp_path, worker_dies
):
    prefix = f"t-fomig-{uuid.uuid4().hex[:8]}"
    logs = {n: tmp_path / f"{n}.log" for n in ("s1", "s2")}
    flags = ("--heartbeat-timeout", HEARTBEAT_TIMEOUT)
    s1 = start_scheduler(nats_url, redis_url, prefix, "s1", logs["s1"], *flags)
    procs = [s1]
    bus = await Bus.connect(nats_url, "test-failover-migration")
    first = TokenWorker(bus, f"w1-{uuid.uuid4().hex[:6]}", slots=8, step_s=0.05)
    spare = TokenWorker(bus, f"w2-{uuid.uuid4().hex[:6]}", slots=8, step_s=0.05)
    gateway = FakeGateway(bus, f"gw-{uuid.uuid4().hex[:6]}")
    try:
        await wait_log(logs["s1"], "leading, epoch", s1)
        s2 = start_scheduler(nats_url, redis_url, prefix, "s2", logs["s2"], *flags)
        procs.append(s2)
        await wait_log(logs["s2"], "standby", s2)
        await first.start()
        await gateway.start()
        await asyncio.sleep(0.5)  # the leader heard the only worker: every request goes to it
        rids = [f"m-{i}" for i in range(STREAMS)]
        for rid in rids:
            await gateway.submit(rid, "A", 8, TOKENS)
        await until(lambda: all(len(gateway.streams[r].tokens) >= 5 for r in rids), 30, "tokens")
        await spare.start()  # where they can go once their worker is gone
        await asyncio.sleep(0.5)
        s1.send_signal(signal.SIGKILL)
        if worker_dies == "after-the-adoption":
            await until(lambda: gateway.resubmitter.resubmitted >= STREAMS, 30, "resubmitted")
            at = {r: len(gateway.streams[r].tokens) for r in rids}
            await until(lambda: all(len(gateway.streams[r].tokens) >= at[r] + 5 for r in rids),
                         30, "tokens after the adoption")  # fmt: skip
        await first.stop()  # its heartbeats and tokens stop, as a SIGKILLed worker's do
        stopped_at = {r: len(gateway.streams[r].tokens) for r in rids}
        await gateway.wait_done(timeout=60)
    finally:
        stop_schedulers(procs, redis_url, prefix)
        await first.stop()
        await spare.stop()
        await bus.close()

    s2_log = logs["s2"].read_text()
    for rid in rids:
        s = gateway.streams[rid]
        assert not s.errors, (rid, s.errors, s2_log[-3000:])
        assert s.tokens == [token_of(rid, i) for i in range(TOKENS)], rid
        # The spare resumed it from the tokens so far (at least those streamed before the death),
        # not from the first token.
        resumed = spare.resumed.get(rid, [])
        assert len(resumed) >= stopped_at[rid], (rid, len(resumed), stopped_at[rid], s2_log[-3000:])
        assert resumed == s.tokens[: len(resumed)], rid
    assert s2_log.count("migrating") >= STREAMS, s2_log[-3000:]
