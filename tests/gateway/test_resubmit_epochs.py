"""Which open requests a gateway resubmits when it hears a leader (``gateway/resubmit.py``): those
accepted by an older leader, or not accepted yet, never those the announced leader accepted itself.
A gateway hears its first announcement after its first requests; it used to resubmit all of them
to the leader that had just accepted them."""

from __future__ import annotations

import asyncio

from loraplex import SamplingParams
from loraplex.bus_memory import MemoryHub
from loraplex.gateway.resubmit import LEADERLESS_MESSAGE, Resubmitter
from loraplex.gateway.streams import StreamRouter
from loraplex.protocol import (
    LeaderAnnounce,
    RequestError,
    Subjects,
    SubmitReply,
    SubmitRequest,
)


def _submit(rid: str) -> SubmitRequest:
    return SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))


def test_only_requests_an_older_leader_accepted_are_resubmitted() -> None:
    async def run() -> tuple[list[str], list[str]]:
        hub = MemoryHub()
        scheduler, gateway = hub.connect("scheduler"), hub.connect("gateway")
        resubmitted: list[str] = []
        leader = [1]  # the epoch of the one answering SUBMIT

        async def on_submit(sub: SubmitRequest) -> SubmitReply:
            if sub.resubmit:
                resubmitted.append(sub.request_id)
            return SubmitReply(sub.request_id, True, epoch=leader[0])

        await scheduler.serve(Subjects.SUBMIT, on_submit, SubmitRequest)
        resubmitter = Resubmitter(gateway, StreamRouter(), timeout_s=5.0)
        await resubmitter.ensure_subscribed()
        for rid, epoch in (("by-1", 1), ("by-1b", 1), ("unanswered", 0)):
            resubmitter.track(_submit(rid))
            if epoch:
                resubmitter.attach(rid, lambda: 0, epoch)

        async def announce(epoch: int) -> list[str]:
            before, leader[0] = len(resubmitted), epoch
            await scheduler.publish(Subjects.LEADER, LeaderAnnounce("s", epoch))
            for _ in range(50):
                await asyncio.sleep(0.01)
            return sorted(resubmitted[before:])

        first = await announce(1)  # the first heard: it accepted by-1 and by-1b itself
        resubmitter.track(_submit("unanswered-2"))
        second = await announce(2)  # a new leader: those 1 accepted, and the unanswered one
        third = await announce(2)  # the same leader again: nothing (all accepted by 2 now)
        return first, second + ["|"] + third

    first, rest = asyncio.run(run())
    assert first == ["unanswered"]
    assert rest == ["by-1", "by-1b", "unanswered", "unanswered-2", "|"]


def test_a_resubmission_carries_the_received_token_ids_only_when_they_match_the_count() -> None:
    async def run() -> dict[str, tuple[int, list[int] | None]]:
        hub = MemoryHub()
        scheduler, gateway = hub.connect("scheduler"), hub.connect("gateway")
        got: dict[str, tuple[int, list[int] | None]] = {}

        async def on_submit(sub: SubmitRequest) -> SubmitReply:
            if sub.resubmit:
                got[sub.request_id] = (sub.tokens_received, sub.received_token_ids)
            return SubmitReply(sub.request_id, True, epoch=2)

        await scheduler.serve(Subjects.SUBMIT, on_submit, SubmitRequest)
        resubmitter = Resubmitter(gateway, StreamRouter(), timeout_s=5.0)
        await resubmitter.ensure_subscribed()
        cases: dict[str, tuple[int, list[int] | None]] = {
            "whole": (3, [7, 8, 9]), "gap": (3, None), "none-yet": (0, []), "short": (3, [7]),
        }  # fmt: skip
        for rid, (count, ids) in cases.items():
            resubmitter.track(_submit(rid))
            resubmitter.attach(rid, lambda c=count: c, 1, lambda i=ids: i)
        await scheduler.publish(Subjects.LEADER, LeaderAnnounce("s", 2))
        for _ in range(50):
            await asyncio.sleep(0.01)
        return got

    got = asyncio.run(run())
    assert got == {"whole": (3, [7, 8, 9]), "gap": (3, None), "none-yet": (0, None),
                   "short": (3, None)}  # fmt: skip


def test_a_resubmission_carries_how_long_the_gateway_has_waited() -> None:
    """So that a failover does not restart the request's --max-queue-wait at the new leader."""

    async def run() -> dict[str, float]:
        hub = MemoryHub()
        scheduler, gateway = hub.connect("scheduler"), hub.connect("gateway")
        got: dict[str, float] = {}

        async def on_submit(sub: SubmitRequest) -> SubmitReply:
            got[sub.request_id] = sub.waited_s if sub.resubmit else -1.0
            return SubmitReply(sub.request_id, True, epoch=2)

        await scheduler.serve(Subjects.SUBMIT, on_submit, SubmitRequest)
        resubmitter = Resubmitter(gateway, StreamRouter(), timeout_s=5.0)
        await resubmitter.ensure_subscribed()
        resubmitter.track(_submit("old"))
        await asyncio.sleep(0.3)
        resubmitter.track(_submit("new"))
        for rid in ("old", "new"):
            resubmitter.attach(rid, lambda: 0, 1)
        await scheduler.publish(Subjects.LEADER, LeaderAnnounce("s", 2))
        for _ in range(50):
            await asyncio.sleep(0.01)
        return got

    got = asyncio.run(run())
    assert 0.3 <= got["old"] < 5.0 and 0.0 <= got["new"] < got["old"] - 0.25, got


def test_requests_a_dead_leader_queued_fail_once_no_leader_is_heard_for_a_while() -> None:
    """A leader that dies while no standby can take over (Redis down) leaves what it had queued
    waiting for nobody: after ``leaderless_s`` without an announcement, the requests with no token
    yet get a 503; those already streaming and those not accepted yet are left alone."""

    async def run() -> tuple[list[str], list[str], dict[str, tuple[int, str]], set[str]]:
        hub = MemoryHub()
        scheduler, gateway = hub.connect("scheduler"), hub.connect("gateway")
        router = StreamRouter()
        resubmitter = Resubmitter(gateway, router, timeout_s=5.0, leaderless_s=0.5)
        await resubmitter.ensure_subscribed()
        queues = {rid: router.open(rid) for rid in ("queued", "streaming", "submitting")}
        for rid in queues:
            resubmitter.track(_submit(rid))
        resubmitter.attach("queued", lambda: 0, 1)
        resubmitter.attach("streaming", lambda: 5, 1)
        await scheduler.publish(Subjects.LEADER, LeaderAnnounce("s", 1))
        for _ in range(20):
            await asyncio.sleep(0.01)
        heard = resubmitter.leader_heard_at
        assert heard is not None
        early = await resubmitter.fail_leaderless(heard + 0.4)  # within the window: a failover gap
        late = await resubmitter.fail_leaderless(heard + 0.6)
        errors = {
            rid: (msg.code, msg.message)
            for rid, q in queues.items()
            if not q.empty() and isinstance(msg := q.get_nowait(), RequestError)
        }
        return early, late, errors, set(resubmitter.open)

    early, late, errors, still_open = asyncio.run(run())
    assert early == [] and late == ["queued"]
    assert errors == {"queued": (503, LEADERLESS_MESSAGE)}
    assert still_open == {"streaming", "submitting"}
