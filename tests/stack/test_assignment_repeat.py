"""A worker answers each assignment sent as a request, and runs an assignment it already took only
once (the scheduler resends one whose answer was lost: ``loraplex.assignments``), over a real
nats-server with an in-process worker (the harness of ``test_worker_guard.py``)."""

from __future__ import annotations

import asyncio
import dataclasses

from loraplex.protocol import PrefillAssign, StreamAck, Subjects, SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.worker.runtime import Worker
from tests.adapters.paging_helpers import until
from tests.stack.test_worker_guard import MAX_TOKENS, PROMPT, Client, _run, demo, exits, expected

__all__ = ["demo", "expected", "exits"]  # the fixtures this module uses


async def _assign(client: Client, msg: PrefillAssign) -> StreamAck:
    subject = Subjects.worker(client.worker.id)
    return await client.bus.request(subject, msg, StreamAck, 5.0)


async def test_a_repeated_assignment_is_answered_and_not_run_twice(
    demo, nats_url, expected, exits
) -> None:
    async def test(client: Client, worker: Worker) -> None:
        beats: list[WorkerHeartbeat] = []

        async def on_beat(hb: WorkerHeartbeat) -> None:
            if hb.worker_id == worker.id:
                beats.append(hb)

        await client.bus.subscribe(Subjects.HEARTBEAT, on_beat, WorkerHeartbeat)
        spec = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
        first = PrefillAssign(SubmitRequest("r-once", "t", client.gateway, PROMPT, spec), epoch=3)
        ack = await _assign(client, first)
        assert ack == StreamAck("r-once")
        await client.outcome(["r-once"], exits)
        assert client.tokens["r-once"] == expected[None]
        await until(lambda: "finished" in client.progress.get("r-once", []), what="finished")
        await until(lambda: not worker.active, what="the request released")

        # The same assignment again (its answer was lost): answered, not run.
        assert await _assign(client, first) == StreamAck("r-once")
        await asyncio.sleep(0.5)  # room for a run that must not happen (the engine is idle)
        assert client.tokens["r-once"] == expected[None]
        assert client.progress["r-once"].count("finished") == 1
        assert not worker.active and not worker.engine.has_unfinished()

        # A new attempt of that request (the scheduler placed it again) runs.
        again = dataclasses.replace(first, attempt=1)
        assert await _assign(client, again) == StreamAck("r-once")
        await until(
            lambda: client.progress["r-once"].count("finished") == 2, what="the second attempt"
        )
        assert client.tokens["r-once"] == expected[None] * 2
        await until(lambda: bool(beats), what="a heartbeat")
        assert beats[-1].acks_assignments  # so the scheduler sends assignments as requests
        assert exits == []

    await _run(demo, nats_url, test)
