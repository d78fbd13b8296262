"""Preemption (``preemption.py``): a tenant holding more than its share of the batch slots gives
one back when a tenant below its share waits for room; the request it gives back resumes later
from its tokens so far, and the two rules never undo each other."""

from __future__ import annotations

import asyncio
import random
import time

from loraplex.bus import Bus
from loraplex.codec import decode, encode
from loraplex.protocol import (
    CancelRequest,
    PrefillAssign,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.placement import Placement
from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.preemption import Parked, Preemption, running_per_tenant
from loraplex.scheduler.recovery import InFlight
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry
from tests.scheduler.test_service_recovery import FakeWorker
from tests.scheduler.waiting import until

SLOTS = 8


class ListingWorker(FakeWorker):
    """A colocated stand-in that lists what it holds in its heartbeats and lets go of a request
    when cancelled, as a real worker does."""

    def __init__(self, bus: Bus, worker_id: str) -> None:
        super().__init__(bus, worker_id)
        self.held: set[str] = set()
        self.cancels: list[CancelRequest] = []

    async def start(self) -> None:
        async def on_control(m: PrefillAssign | CancelRequest) -> None:
            if isinstance(m, PrefillAssign):
                self.assigned.append(m)
                self.held.add(m.request.request_id)
            else:
                self.cancels.append(m)
                self.held.discard(m.request_id)

        await self.bus.subscribe(
            Subjects.worker(self.id), on_control, PrefillAssign | CancelRequest
        )
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            hb = WorkerHeartbeat(
                self.id, "both", 100, 100, 16, len(self.held), 0, SLOTS, ts=time.time(),
                incarnation=self.incarnation, active=sorted(self.held),
            )  # fmt: skip
            await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.1)

    async def token(self, rid: str, tenant: str, ids: list[int], done: int) -> None:
        from loraplex.protocol import RequestProgress

        p = RequestProgress(
            rid, tenant, self.id, "tokens", new_tokens=len(ids), completion_tokens=done,
            token_ids=ids,
        )  # fmt: skip
        await self.bus.publish(Subjects.USAGE, p)

    async def finish(self, rid: str, tenant: str, done: int) -> None:
        from loraplex.protocol import RequestProgress

        self.held.discard(rid)
        p = RequestProgress(rid, tenant, self.id, "finished", completion_tokens=done)
        await self.bus.publish(Subjects.USAGE, p)


def _sub(rid: str, tenant: str) -> SubmitRequest:
    return SubmitRequest(rid, tenant, "gw", [1, 2, 3], SamplingParams(max_tokens=50))


def test_a_tenant_over_its_share_gives_slots_back_and_they_resume_from_their_tokens(nats_url):
    async def run() -> None:
        settings = SchedulerSettings(nats_url, preempt_after_s=0.3)
        service = SchedulerService(settings, {})
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        worker = ListingWorker(bus, "w-a")
        await worker.start()
        await until(lambda: service.registry.can_serve())

        async def submit(rid: str, tenant: str) -> None:
            raw = await bus.nc.request(Subjects.SUBMIT, encode(_sub(rid, tenant)), timeout=5)
            assert decode(raw.data, SubmitReply).accepted

        def placed(rid: str) -> list[PrefillAssign]:
            return [a for a in worker.assigned if a.request.request_id == rid]

        # Tenant a fills every slot and decodes on each (the prefill's token, then one more).
        hogs = [f"a{i}" for i in range(SLOTS)]
        for rid in hogs:
            await submit(rid, "a")
            await until(lambda rid=rid: placed(rid))
        for rid in hogs:
            await worker.token(rid, "a", [7, 8], 2)
        await until(lambda: all(service.inflight[r].tokens_sent for r in hogs))

        # Tenant b waits for room: a's newest request is preempted for it, and its worker may
        # still report a token it generated before the cancel reached it (kept, not lost).
        for i in range(5):
            await submit(f"b{i}", "b")
        await until(lambda: worker.cancels, what="nothing was preempted")
        first = worker.cancels[0]
        assert first.request_id == hogs[-1] and first.remember is False
        await worker.token(first.request_id, "a", [9], 3)
        await until(lambda: placed("b0"), what="b's request never got the slot")

        # Four slots each, and then it stays there: neither rule undoes the other.
        await until(lambda: len(worker.cancels) == 4, what="a did not come down to its share")
        await asyncio.sleep(1.0)
        assert len(worker.cancels) == 4
        assert sorted(service.parked) == sorted(hogs[4:])
        running = running_per_tenant(service.inflight.values())
        assert running == {"a": 4, "b": 4} and list(service.submits) == ["b4"]
        sample = service.metrics.registry.get_sample_value
        assert sample("loraplex_scheduler_preemptions_total", {"tenant": "a"}) == 4
        assert sample("loraplex_scheduler_preemptions_total", {"tenant": "b"}) == 0

        # b's requests end: the first free slot goes to b's queued one (a is still above b),
        # the next ones to a's parked requests, each from its tokens so far, as a new attempt.
        await worker.finish("b0", "b", 3)
        await until(lambda: placed("b4"))
        assert not any(placed(r)[1:] for r in hogs)
        for rid in ("b1", "b2", "b3", "b4"):
            await worker.finish(rid, "b", 3)
        await until(lambda: not service.parked, what="a's parked requests never resumed")
        again = placed(first.request_id)
        assert [a.attempt for a in again] == [0, 1]
        assert again[1].generated == [7, 8, 9]  # the token reported after the cancel is kept
        assert all(placed(r)[-1].generated == [7, 8] for r in hogs[4:-1])
        await worker.token(first.request_id, "a", [10], 4)
        await worker.finish(first.request_id, "a", 4)
        await until(lambda: first.request_id not in service.inflight)
        worker.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def _preemption(policy_name: str = "vtc", after: float = 1.0) -> Preemption:
    registry = WorkerRegistry()
    hb = WorkerHeartbeat("w", "both", 1000, 1000, 16, 0, 0, SLOTS, active=[])
    registry.heartbeat(hb, 0.0)

    async def publish(subject: str, msg: object) -> None:
        return None

    return Preemption(after, registry, make_policy(policy_name), {}, {}, publish, lambda: None)  # type: ignore[arg-type]


def _run(p: Preemption, rid: str, tenant: str, now: float) -> InFlight:
    """``rid`` admitted, placed on the worker and decoding."""
    sub = _sub(rid, tenant)
    p.policy.enqueue(QueuedRequest(rid, tenant, 3, 50, now), now)
    p.policy.admit(p.policy.pick(now), now)  # type: ignore[arg-type]
    job = InFlight(sub, Placement("w", ""), tokens_sent=True, assigned_at=now, workers={"w"})
    job.tokens.ids = [7, 8]
    job.completion_tokens = 2  # decoding: a token beyond the prefill's
    p.inflight[rid] = job
    p.registry.commit("w", rid, 53, None)
    return job


def test_the_two_rules_never_undo_each_other_whatever_the_weights():
    """Random weights and slot splits: a request preempted for tenant b is never the one that
    goes back before b's next request, so no slot ping-pongs."""
    rng = random.Random(7)
    for _ in range(300):
        p = _preemption()
        weights = {"a": rng.choice([0.5, 1, 2, 3]), "b": rng.choice([0.5, 1, 2, 3])}
        p.policy.set_weights(weights)
        held_by_a = rng.randint(1, SLOTS)
        for i in range(SLOTS):
            _run(p, f"r{i}", "a" if i < held_by_a else "b", float(i))
        p.policy.enqueue(QueuedRequest("new", "b", 3, 50, 100.0), 100.0)
        head = p.policy.peek()
        assert head is not None and head.tenant == "b"
        victim = p.choose(head, _sub("new", "b"))
        counts = running_per_tenant(p.inflight.values())
        over = counts.get("a", 0) / weights["a"] > (counts.get("b", 0) + 1) / weights["b"]
        assert (victim is not None) == over
        if victim is None:
            continue
        assert victim.submit.tenant == "a" and victim.submit.request_id == f"r{held_by_a - 1}"
        del p.inflight[victim.submit.request_id]
        p.parked[victim.submit.request_id] = Parked(victim, 0.0, ())
        assert p.resume_before(head, running_per_tenant(p.inflight.values()), 1.0) is None
        back = p.resume_before(None, None, 1.0)  # nothing queued: it goes back
        assert back is not None and back.job is victim


def test_only_policies_that_share_fairly_preempt_and_zero_turns_it_off():
    assert _preemption("vtc").enabled and _preemption("lcf").enabled
    assert not _preemption("fcfs").enabled and not _preemption("rpm").enabled
    assert not _preemption("vtc", after=0.0).enabled


def test_a_request_without_a_resumable_log_or_still_in_prefill_is_never_preempted():
    p = _preemption()
    for i in range(SLOTS):
        job = _run(p, f"r{i}", "a", float(i))
        if i % 2:
            job.tokens.broken = True  # a lost report: it could not resume
        else:
            job.completion_tokens = 1  # only the prefill's token so far
    p.policy.enqueue(QueuedRequest("new", "b", 3, 50, 100.0), 100.0)
    assert p.choose(p.policy.peek(), _sub("new", "b")) is None  # type: ignore[arg-type]
    assert p.registry.workers["w"].requests.keys() == set(p.inflight)  # released none


def test_a_request_waiting_on_its_worker_for_an_adapter_slot_gets_one():
    """Every adapter slot of the worker pinned by tenant a's adapters: b's request, placed there,
    waits for a slot; a's newest request alone with its adapter there is parked (its end frees
    the slot), once, and never one whose adapter another request still pins."""
    p = _preemption(after=1.0)
    hb = WorkerHeartbeat(
        "w", "both", 1000, 1000, 16, 0, 0, SLOTS, active=[], adapter_slots_total=2,
        adapter_slots_pinned=2,
    )  # fmt: skip
    p.registry.heartbeat(hb, 0.0)

    def run(rid: str, tenant: str, adapter: str, at: float) -> InFlight:
        job = _run(p, rid, tenant, at)
        job.submit = SubmitRequest(
            rid, tenant, "gw", [1, 2, 3], SamplingParams(max_tokens=50), adapter
        )
        p.registry.release("w", rid)
        p.registry.commit("w", rid, 53, adapter)
        return job

    run("a-x1", "a", "a/x", 0.0)
    run("a-x2", "a", "a/x", 1.0)  # newest, but a/x stays pinned by a-x1
    run("a-y", "a", "a/y", 0.5)
    waiting = run("b1", "b", "b/z", 2.0)
    waiting.tokens_sent, waiting.completion_tokens = False, 0
    assert p.registry.workers["w"].slots_full

    async def check(now: float) -> InFlight | None:
        return await p.check(now)

    assert asyncio.run(check(2.5)) is None  # it has not waited long enough
    victim = asyncio.run(check(3.5))
    assert victim is not None and victim.submit.request_id == "a-y"
    assert "a/y" not in p.registry.workers["w"].adapter_runs and list(p.parked) == ["a-y"]
    assert asyncio.run(check(3.6)) is None  # the freed slot is on its way to b1


def test_a_hand_over_waiting_for_an_adapter_slot_on_its_decode_worker_gets_one():
    """Disaggregated: the prefill worker's first token streamed, and the decode worker's K/V
    begin waits for an adapter slot that tenant a's adapters pin there."""
    p = _preemption(after=1.0)
    for wid, role in (("w", "decode"), ("pf", "prefill")):
        hb = WorkerHeartbeat(
            wid, role, 1000, 1000, 16, 0, 0, SLOTS, active=[], adapter_slots_total=1,
            adapter_slots_pinned=1 if wid == "w" else 0,
        )  # fmt: skip
        p.registry.heartbeat(hb, 0.0)
    hog = _run(p, "a1", "a", 0.0)
    hog.submit = SubmitRequest("a1", "a", "gw", [1, 2, 3], SamplingParams(max_tokens=50), "a/x")
    hog.placement, hog.prefill_done = Placement("pf", "w"), True
    p.registry.release("w", "a1")
    p.registry.commit("w", "a1", 53, "a/x")
    p.policy.enqueue(QueuedRequest("b1", "b", 3, 50, 1.0), 1.0)
    p.policy.admit(p.policy.pick(1.0), 1.0)  # type: ignore[arg-type]
    sub = SubmitRequest("b1", "b", "gw", [1, 2, 3], SamplingParams(max_tokens=50), "b/z")
    # The prefill worker's first token streamed; the decode worker has not decoded one yet.
    waiting = InFlight(sub, Placement("pf", "w"), tokens_sent=True, assigned_at=1.0)
    waiting.completion_tokens = 1
    waiting.workers = {"pf", "w"}
    p.inflight["b1"] = waiting
    p.registry.commit("pf", "b1", 3, "b/z")
    p.registry.commit("w", "b1", 53, "b/z")
    # a runs 1 request, b 1 (counted while it waits): a is not over b's share, so nothing moves
    assert asyncio.run(p.check(5.0)) is None
    hog2 = _run(p, "a2", "a", 0.5)  # base model: a second request of a, no adapter
    hog2.placement, hog2.prefill_done = Placement("pf", "w"), True
    p.registry.release("w", "a2")
    p.registry.commit("w", "a2", 53, None)
    victim = asyncio.run(p.check(5.0))
    assert victim is hog  # alone with its adapter there; a2 pins no slot
    assert "a/x" not in p.registry.workers["w"].adapter_runs


def _parked_hog(p: Preemption) -> InFlight:
    """a fills the worker, b waits: a's newest request is parked; returns it."""
    for i in range(SLOTS):
        _run(p, f"a{i}", "a", float(i))
    p.policy.enqueue(QueuedRequest("b1", "b", 3, 50, 10.0), 10.0)
    victim = p.choose(p.policy.peek(), _sub("b1", "b"))  # type: ignore[arg-type]
    assert victim is not None
    asyncio.run(p.park(victim, 12.0))
    return victim


def test_a_parked_request_that_cannot_resume_in_time_fails_and_is_settled():
    p = _preemption()
    victim = _parked_hog(p)
    assert p.expire(60.0, 71.0) == []  # parked 59 s: not yet
    assert p.expire(0.0, 1e9) == []  # 0: never
    out = p.expire(60.0, 72.5)
    assert [(j.submit.request_id, w) for j, w in out] == [(victim.submit.request_id, 60.5)]
    assert not p.parked and victim.submit.request_id not in p.policy._running


class NoRetries:
    def take_retry(self, request_id: str) -> None:
        return None


def test_a_parked_request_can_be_cancelled_and_never_resumes():
    from loraplex.scheduler.intake import Intake
    from loraplex.scheduler.takeover import Takeover

    p = _preemption()
    victim = _parked_hog(p)
    rid = victim.submit.request_id
    cancelled: dict[str, float] = {}
    intake = Intake(
        SchedulerSettings("nats://unused"), p.registry, p.policy,
        Takeover(p.registry, p.policy, 2.0), NoRetries(), None, queued={}, inflight=p.inflight,
        retry=[], cancelled=cancelled, leading=lambda: True, listening_since=lambda: 0.0,
        kick=lambda: None, counters_changed=lambda: None, parked=p.parked,
    )  # type: ignore[arg-type]  # fmt: skip
    assert intake.known(rid) is victim.submit  # a SUBMIT sent again is the same request
    asyncio.run(intake.on_cancel(CancelRequest(rid)))
    assert rid not in p.parked and rid in cancelled and rid not in p.policy._running
    assert p.resume_before(None, None, 100.0) is None
