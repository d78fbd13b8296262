"""A request's last message to its gateway (``loraplex.terminal``): sent as a request, sent again
until the gateway acknowledges it, given up on when no gateway answers for ``deliver_s``; and the
gateway's side (``serve_stream``) acknowledges last messages and hands every message on."""

from __future__ import annotations

import asyncio

from loraplex.acked import AckedSender
from loraplex.bus import RawMessage
from loraplex.bus_memory import MemoryHub
from loraplex.protocol import (
    RequestError,
    StreamAck,
    Subjects,
    TokenDelta,
    decode,
    encode,
)
from loraplex.terminal import serve_stream

FINAL = TokenDelta("r1", [7], "x", "length", completion_tokens=1, full_text="x")


def test_the_last_message_is_sent_again_until_the_gateway_acknowledges_it() -> None:
    async def run() -> tuple[bool, int, int, list[str]]:
        hub = MemoryHub()
        worker, gateway = hub.connect("worker"), hub.connect("gateway")
        seen: list[str] = []

        async def lossy(raw: RawMessage) -> None:  # the first two copies are lost on the way
            seen.append(decode(raw.data, TokenDelta).request_id)
            if len(seen) > 2:
                await raw.respond(encode(StreamAck("r1")))

        await gateway.subscribe_raw(Subjects.stream("gw"), lossy)
        sender = AckedSender(worker, attempt_s=0.05, deliver_s=5.0)
        delivered = await sender.deliver(Subjects.stream("gw"), FINAL)
        return delivered, sender.retried, sender.undelivered, seen

    delivered, retried, undelivered, seen = asyncio.run(run())
    assert delivered and seen == ["r1"] * 3
    assert retried == 2 and undelivered == 0


def test_a_gateway_that_is_gone_is_given_up_on() -> None:
    async def run() -> tuple[bool, int]:
        hub = MemoryHub()
        sender = AckedSender(hub.connect("worker"), attempt_s=0.05, deliver_s=0.5)
        delivered = await sender.deliver(
            Subjects.stream("nobody"), RequestError("r2", 503, "failed")
        )
        return delivered, sender.undelivered

    assert asyncio.run(run()) == (False, 1)


def test_a_gateway_that_resubscribes_late_still_gets_it() -> None:
    """No responders for a while (the gateway reconnecting to another node): keep trying."""

    async def run() -> list[object]:
        hub = MemoryHub()
        worker, gateway = hub.connect("worker"), hub.connect("gateway")
        got: list[object] = []

        async def on_message(msg: object) -> None:
            got.append(msg)

        sender = AckedSender(worker, attempt_s=0.05, deliver_s=5.0)
        sender.send(Subjects.stream("gw"), FINAL)
        await asyncio.sleep(0.5)
        await serve_stream(gateway, "gw", on_message)
        for _ in range(100):
            if not len(sender):
                break
            await asyncio.sleep(0.02)
        return got

    assert asyncio.run(run()) == [FINAL]


def test_serve_stream_acknowledges_requests_and_passes_plain_messages_on() -> None:
    async def run() -> tuple[StreamAck, list[object]]:
        hub = MemoryHub()
        worker, gateway = hub.connect("worker"), hub.connect("gateway")
        got: list[object] = []

        async def on_message(msg: object) -> None:
            got.append(msg)

        await serve_stream(gateway, "gw", on_message)
        middle = TokenDelta("r1", [5], "a", completion_tokens=1)
        await worker.publish(Subjects.stream("gw"), middle)
        ack = await worker.request(Subjects.stream("gw"), FINAL, StreamAck, 1.0)
        await worker.flush()
        return ack, got

    ack, got = asyncio.run(run())
    assert ack == StreamAck("r1")
    assert got == [TokenDelta("r1", [5], "a", completion_tokens=1), FINAL]


def test_close_waits_a_little_then_stops_retrying() -> None:
    async def run() -> tuple[int, int]:
        hub = MemoryHub()
        sender = AckedSender(hub.connect("worker"), attempt_s=0.05, deliver_s=60.0)
        sender.send(Subjects.stream("nobody"), FINAL)
        await asyncio.sleep(0)
        pending = len(sender)
        await sender.close(wait_s=0.1)
        return pending, len(sender)

    assert asyncio.run(run()) == (1, 0)


def test_progress_is_acknowledged_only_while_leading() -> None:
    """A standby scheduler hears every report too; it must not answer one (its leader may have
    missed it, and the worker would stop resending)."""
    from loraplex.bus import BusTimeoutError
    from loraplex.protocol import RequestProgress
    from loraplex.terminal import serve_progress

    async def run() -> tuple[StreamAck, str, list[str]]:
        hub = MemoryHub()
        worker, scheduler = hub.connect("worker"), hub.connect("scheduler")
        leading = [True]
        got: list[str] = []

        async def on_progress(p: RequestProgress) -> None:
            got.append(p.event)

        await serve_progress(scheduler, on_progress, lambda: leading[0])
        done = RequestProgress("r1", "t", "w", "finished", 1, 3, 1, token_ids=[7])
        ack = await worker.request(Subjects.USAGE, done, StreamAck, 1.0)
        leading[0] = False
        try:
            await worker.request(Subjects.USAGE, done, StreamAck, 0.2)
            standby = "answered"
        except BusTimeoutError:
            standby = "silent"
        return ack, standby, got

    ack, standby, got = asyncio.run(run())
    assert ack == StreamAck("r1") and standby == "silent" and got == ["finished", "finished"]


def test_a_worker_sends_its_last_report_until_the_scheduler_answers() -> None:
    """``Publisher``: ``finished`` and ``error`` reports go through the terminal sender; a
    retryable ``failed`` does not (a late copy would fail the request's next placement)."""
    from loraplex import SamplingParams
    from loraplex.protocol import RequestProgress, SubmitRequest
    from loraplex.worker.active import Active
    from loraplex.worker.publish import Publisher

    async def run() -> tuple[list[str], int]:
        hub = MemoryHub()
        worker, scheduler = hub.connect("worker"), hub.connect("scheduler")
        heard: list[str] = []

        async def lossy(raw: RawMessage) -> None:  # every first copy of a request is lost
            p = decode(raw.data, RequestProgress)
            heard.append(p.event + ("?" if raw.reply else ""))
            if raw.reply and heard.count(p.event + "?") > 1:
                await raw.respond(encode(StreamAck(p.request_id)))

        await scheduler.subscribe_raw(Subjects.USAGE, lossy)
        publisher = Publisher(worker, "w")
        publisher.terminal = AckedSender(worker, attempt_s=0.05, deliver_s=5.0)
        sub = SubmitRequest("r1", "t", "gw", [1, 2], SamplingParams(max_tokens=2))
        req = Active(sub, None, "", 0, [])
        await publisher.progress(req, "tokens", new_tokens=1, token_ids=[5])
        await publisher.progress(req, "failed", message="x")
        await publisher.progress(req, "finished", new_tokens=1, token_ids=[6])
        for _ in range(100):
            if not len(publisher.terminal):
                break
            await asyncio.sleep(0.02)
        return heard, publisher.terminal.retried

    heard, retried = asyncio.run(run())
    assert heard == ["tokens", "failed", "finished?", "finished?"] and retried == 1


def test_a_message_no_longer_wanted_is_not_sent_again() -> None:
    """``wanted`` turns False (the scheduler placed the request elsewhere): resending stops,
    though nobody answered."""

    async def run() -> tuple[bool, int]:
        hub = MemoryHub()
        worker, gateway = hub.connect("worker"), hub.connect("gateway")
        copies: list[bytes] = []

        async def silent(raw: RawMessage) -> None:
            copies.append(raw.data)

        await gateway.subscribe_raw(Subjects.stream("gw"), silent)
        sender = AckedSender(worker, attempt_s=0.05, deliver_s=5.0)
        delivered = await sender.deliver(
            Subjects.stream("gw"), FINAL, wanted=lambda: len(copies) < 3
        )
        return delivered, len(copies)

    assert asyncio.run(run()) == (False, 3)


def test_a_failing_wanted_check_drops_only_its_own_message() -> None:
    async def run() -> tuple[bool, bool]:
        hub = MemoryHub()
        worker, gateway = hub.connect("worker"), hub.connect("gateway")
        answered = 0

        async def answer_from_the_second(raw: RawMessage) -> None:
            nonlocal answered
            answered += 1
            if answered > 2:  # both first copies are lost
                await raw.respond(encode(StreamAck("r")))

        def broken() -> bool:
            raise RuntimeError("a bug in the sender's check")

        await gateway.subscribe_raw(Subjects.stream("gw"), answer_from_the_second)
        sender = AckedSender(worker, attempt_s=0.05, deliver_s=5.0)
        bad = asyncio.ensure_future(sender.deliver(Subjects.stream("gw"), FINAL, wanted=broken))
        good = await sender.deliver(Subjects.stream("gw"), FINAL)
        return await bad, good

    assert asyncio.run(run()) == (False, True)


def test_a_worker_snapshots_a_requests_token_ids_now_and_then() -> None:
    """``Publisher.tokens``: every ``TOKEN_SNAPSHOT_EVERY`` tokens, then every quarter of the
    count, a ``tokens`` report carries all the completion's ids so far (a migrated request's
    earlier ones first), so a lost report cannot stop a later migration; the others carry none."""
    from loraplex import SamplingParams
    from loraplex.engine.outputs import StepOutput
    from loraplex.protocol import TOKEN_SNAPSHOT_EVERY, RequestProgress, SubmitRequest
    from loraplex.worker.active import Active
    from loraplex.worker.publish import Publisher

    async def run() -> list[RequestProgress]:
        hub = MemoryHub()
        worker, scheduler = hub.connect("worker"), hub.connect("scheduler")
        reports: list[RequestProgress] = []

        async def on_report(p: RequestProgress) -> None:
            reports.append(p)

        await scheduler.subscribe(Subjects.USAGE, on_report, RequestProgress)
        publisher = Publisher(worker, "w")
        sub = SubmitRequest("r1", "t", "gw", [1, 2], SamplingParams(max_tokens=500))
        req = Active(sub, None, "", 3, [900, 901, 902])  # migrated after 3 tokens
        for i in range(400 - 3):
            await publisher.tokens(req, StepOutput("r1", [i], "x", finished=False))
        for _ in range(50):
            await asyncio.sleep(0)
        return reports

    reports = asyncio.run(run())
    assert TOKEN_SNAPSHOT_EVERY == 64  # the counts below
    with_snapshot = [p for p in reports if p.all_token_ids is not None]
    assert [p.completion_tokens for p in with_snapshot] == [64, 128, 192, 256, 320, 400]
    for p in with_snapshot:
        assert p.all_token_ids == [900, 901, 902, *range(p.completion_tokens - 3)]
    assert len(reports) == 400 - 3
