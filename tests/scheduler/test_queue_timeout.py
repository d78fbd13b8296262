"""``--max-queue-wait``: requests still queued after it fail with a 503 "overloaded", oldest first,
instead of waiting for the gateway's 504; placed requests are left alone."""

from __future__ import annotations

import asyncio

from loraplex.bus import Bus
from loraplex.codec import decode, encode
from loraplex.protocol import RequestError, Subjects, SubmitReply, SubmitRequest
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.queue_timeout import expire_queued
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.terminal import serve_stream
from tests.scheduler.test_service_recovery import FakeWorker
from tests.scheduler.waiting import until


def _sub(rid: str, tenant: str) -> SubmitRequest:
    return SubmitRequest(rid, tenant, "gw", [1, 2, 3], SamplingParams(max_tokens=4))


def _queue(arrivals: list[tuple[str, str, float]]):  # type: ignore[no-untyped-def]
    policy = make_policy("vtc")
    queued = {}
    for rid, tenant, t in arrivals:
        policy.enqueue(QueuedRequest(rid, tenant, 3, 4, t), t)
        queued[rid] = _sub(rid, tenant)
    return policy, queued


def test_expired_requests_leave_the_policy_and_the_table_oldest_first():
    policy, queued = _queue(
        [("a1", "a", 0.0), ("b1", "b", 1.0), ("a2", "a", 2.0), ("a3", "a", 5.0)]
    )
    assert expire_queued(policy, queued, 3.0, now=2.9) == []
    out = expire_queued(policy, queued, 3.0, now=4.0)
    assert [(s.request_id, w) for s, w in out] == [("a1", 4.0), ("b1", 3.0)]
    assert list(queued) == ["a2", "a3"] and len(policy) == 2 and policy.queue_len("b") == 0
    # The request picked (admitted) is no longer queued: it never expires.
    picked = policy.pick(4.5)
    assert picked is not None and picked.request_id == "a2"
    policy.admit(picked, 4.5)
    del queued["a2"]
    assert [s.request_id for s, _ in expire_queued(policy, queued, 3.0, now=8.0)] == ["a3"]
    assert len(policy) == 0 and queued == {} and policy.num_running() == 1


def test_a_zero_limit_never_expires():
    policy, queued = _queue([("a1", "a", 0.0)])
    assert expire_queued(policy, queued, 0.0, now=1e9) == []
    assert list(queued) == ["a1"] and len(policy) == 1


def test_requests_queued_past_the_limit_fail_overloaded_and_placed_ones_run(nats_url):
    async def run() -> None:
        service = SchedulerService(SchedulerSettings(nats_url, max_queue_wait_s=0.8), {})
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        worker = FakeWorker(bus, "w-a")  # 8 slots; it never finishes what it is given
        await worker.start()
        errors: list[RequestError] = []

        async def on_error(m: RequestError) -> None:
            errors.append(m)

        await serve_stream(bus, "gw", on_error, RequestError)
        await bus.flush()
        await until(lambda: service.registry.can_serve())
        for i in range(11):
            raw = await bus.nc.request(Subjects.SUBMIT, encode(_sub(f"r{i}", "t")), timeout=5)
            assert decode(raw.data, SubmitReply).accepted
        await until(lambda: len(worker.assigned) == 8)
        await until(lambda: len(errors) == 3, timeout=10)
        assert sorted(e.request_id for e in errors) == ["r10", "r8", "r9"]
        assert all(e.code == 503 and "overloaded" in e.message for e in errors)
        assert service.submits == {} and len(service.policy) == 0
        assert len(service.inflight) == 8  # the placed requests were left alone
        sample = service.metrics.registry.get_sample_value
        assert sample("loraplex_scheduler_queue_timeouts_total", {"tenant": "t"}) == 3
        await asyncio.sleep(1.0)
        assert len(errors) == 3
        worker.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_a_resubmission_expires_on_its_first_arrival_behind_younger_requests():
    policy, queued = _queue([("young", "a", 10.0), ("resubmitted", "b", 1.0)])
    out = expire_queued(policy, queued, 5.0, now=7.0)
    assert [s.request_id for s, _ in out] == ["resubmitted"] and list(queued) == ["young"]


def _intake_arrival(sub: SubmitRequest, now: float = 100.0) -> float:
    """The arrival the leader queues ``sub`` with: a real Intake and registry (no worker heard
    yet, so admission queues); a SUBMIT that is neither adopted nor refused touches neither the
    takeover nor the outbox, and reads only the outage from recovery."""
    from loraplex.scheduler.intake import Intake
    from loraplex.scheduler.workers import WorkerRegistry

    class NoOutage:
        def outage_s(self, now: float) -> float:
            return 0.0

    policy = make_policy("vtc")
    intake = Intake(
        SchedulerSettings("nats://unused"), WorkerRegistry(), policy, None, NoOutage(), None,
        queued={}, inflight={}, retry=[], cancelled={}, leading=lambda: True,
        listening_since=lambda: now, kick=lambda: None, counters_changed=lambda: None,
    )  # type: ignore[arg-type]  # fmt: skip
    assert intake.submit(sub, now).accepted
    return policy.queued()[0].arrival


def test_the_leader_queues_a_resubmission_with_the_time_it_already_waited():
    import dataclasses

    sub = _sub("r", "t")
    assert _intake_arrival(sub) == 100.0
    assert _intake_arrival(dataclasses.replace(sub, resubmit=True, waited_s=42.0)) == 58.0
    assert _intake_arrival(dataclasses.replace(sub, waited_s=42.0)) == 100.0  # not a resubmit
    for bad in (float("nan"), float("inf"), -5.0, 1e9):  # a gateway's nonsense counts as none
        assert _intake_arrival(dataclasses.replace(sub, resubmit=True, waited_s=bad)) == 100.0
