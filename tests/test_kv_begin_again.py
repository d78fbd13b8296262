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


def _begin(rid: str, so: object = None) -> KVBegin:
    params = SamplingParams(max_tokens=4, structured_outputs=so)  # type: ignore[arg-type]
    sub = SubmitRequest(rid, "t", "gw", list(range(3, 43)), params)
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


def test_a_lost_begin_is_sent_again_before_the_timeout(monkeypatch) -> None:
    """The prefill side tries again every ``BEGIN_ATTEMPT_S`` instead of waiting out the whole
    K/V timeout for a begin (or a reply) that a dying NATS node lost."""
    from loraplex.bus import RawMessage
    from loraplex.bus_memory import MemoryHub
    from loraplex.worker import kv_sender

    monkeypatch.setattr(kv_sender, "BEGIN_ATTEMPT_S", 0.05)

    async def run() -> tuple[KVReply, int, float]:
        hub = MemoryHub()
        prefill, decode_bus = hub.connect("prefill"), hub.connect("decode")
        seen: list[str] = []

        async def lossy(raw: RawMessage) -> None:  # the first begin is lost on the way
            seen.append(decode(raw.data, KVBegin).request.request_id)
            if len(seen) > 1:
                await raw.respond(encode(KVReply("lost-once", True)))

        await decode_bus.subscribe_raw(Subjects.kv("decode-x"), lossy)
        sender = kv_sender.KVSender(prefill, "prefill-x", 10.0, None, None, None)  # type: ignore[arg-type]
        t0 = asyncio.get_running_loop().time()
        reply = await sender._begin(Subjects.kv("decode-x"), _begin("lost-once"))
        return reply, len(seen), asyncio.get_running_loop().time() - t0

    reply, tries, took = asyncio.run(run())
    assert reply.accepted and tries == 2
    assert took < 5.0  # not the 10 s K/V timeout


def test_a_begin_nobody_answers_fails_after_the_timeout(monkeypatch) -> None:
    from loraplex.bus import BusTimeoutError, RawMessage
    from loraplex.bus_memory import MemoryHub
    from loraplex.worker import kv_sender

    monkeypatch.setattr(kv_sender, "BEGIN_ATTEMPT_S", 0.05)

    async def run() -> int:
        hub = MemoryHub()
        prefill, decode_bus = hub.connect("prefill"), hub.connect("decode")
        seen: list[int] = []

        async def silent(raw: RawMessage) -> None:
            seen.append(1)

        await decode_bus.subscribe_raw(Subjects.kv("decode-y"), silent)
        sender = kv_sender.KVSender(prefill, "prefill-y", 0.3, None, None, None)  # type: ignore[arg-type]
        try:
            await sender._begin(Subjects.kv("decode-y"), _begin("never"))
        except BusTimeoutError as e:
            assert "within 0.3s" in str(e)
            return len(seen)
        raise AssertionError("no timeout")

    assert asyncio.run(run()) >= 3


def test_a_begin_waiting_for_its_compile_holds_up_no_other_hand_over(
    demo,  # noqa: F811
    nats_url,
    monkeypatch,
) -> None:
    """A begin waits for its output constraint to compile (red team: a legal 70 KB schema took
    67 s).  The worker answers other begins meanwhile (before, nats-py's one-at-a-time delivery
    held every other tenant's hand-over behind it), and a begin sent again supersedes the first."""
    import threading

    from loraplex.bus import Bus
    from loraplex.structured_outputs import StructuredOutputsParams
    from loraplex.worker.runtime import Worker
    from tests.test_kv_transfer import _settings, make_engine

    monkeypatch.setenv("LORAPLEX_GRAMMAR_COMPILE_S", "30")
    release = threading.Event()

    async def run() -> tuple[KVReply, bool, KVReply, KVReply]:
        s = _settings(demo, nats_url, "decode", kv_timeout_s=30.0)
        worker = Worker(s, make_engine(s), None)
        real = worker.engine.grammars.compile

        def slow(so: StructuredOutputsParams) -> object:
            if so.spec == "slow":
                release.wait(30)
            return real(so)

        worker.engine.grammars.compile = slow  # type: ignore[method-assign]
        await worker.start()
        bus = await Bus.connect(nats_url, "test-peer")
        subject = Subjects.kv(worker.id)
        so = StructuredOutputsParams(regex="slow")
        first = asyncio.ensure_future(bus.nc.request(subject, encode(_begin("c", so)), timeout=30))
        await asyncio.sleep(0.3)  # it compiles
        plain = decode(
            (await bus.nc.request(subject, encode(_begin("p")), timeout=5)).data, KVReply
        )
        waiting = not first.done()
        again = asyncio.ensure_future(bus.nc.request(subject, encode(_begin("c", so)), timeout=30))
        await asyncio.sleep(0.3)
        release.set()
        replies = [decode((await f).data, KVReply) for f in (first, again)]
        await worker.stop()
        await bus.close()
        return plain, waiting, *replies

    plain, waiting, first, again = asyncio.run(run())
    assert plain.accepted and waiting
    assert (first.accepted, first.reason) == (
        False,
        "superseded by a later begin of the same request",
    )
    assert again.accepted, again.reason
