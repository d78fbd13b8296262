"""A K/V hand-over that begins again for the same request: the scheduler re-dispatched it after
the first one failed half-way (its chunks, or the KVBegin's reply, lost in a NATS node's death).
The decode worker drops the partial transfer and its reservation and takes the new one; before,
the old reservation made it refuse with "no free KV blocks" until the request ran out of attempts.
"""

from __future__ import annotations

import asyncio

from loraplex import SamplingParams
from loraplex.protocol import KVBegin, KVReply, Subjects, SubmitRequest, decode, encode
from tests.test_kv_transfer import _decode_worker, demo  # noqa: F401  (the fixture)


def _begin(rid: str) -> KVBegin:
    sub = SubmitRequest(rid, "t", "gw", list(range(3, 43)), SamplingParams(max_tokens=4))
    return KVBegin(sub, first_token=7, num_tokens=40, num_chunks=2, dtype="float32",
                   shape=[4, 2, 10, 4, 2, 32])  # fmt: skip


def test_a_hand_over_that_begins_again_replaces_the_partial_one(demo, nats_url):  # noqa: F811
    async def run() -> tuple[list[KVReply], list[int]]:
        worker, bus = await _decode_worker(demo, nats_url, kv_timeout_s=30.0)
        replies: list[KVReply] = []
        used: list[int] = []
        for rid in ("again", "again", "other"):
            raw = await bus.nc.request(Subjects.kv(worker.id), encode(_begin(rid)), timeout=10)
            replies.append(decode(raw.data, KVReply))
            used.append(worker.engine.allocator.num_used)
        await worker.stop()
        await bus.close()
        return replies, used

    replies, used = asyncio.run(run())
    assert [(r.accepted, r.reason) for r in replies] == [(True, "")] * 3
    assert used == [10, 10, 20]  # the first reservation was given back, not kept beside
