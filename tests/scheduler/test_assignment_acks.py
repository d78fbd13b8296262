"""Assignments sent until the worker answers (``loraplex.assignments``), on a real nats-server with
a real scheduler and fake workers: a lost assignment is sent again within about a second (not
found only by the heartbeat check), resending stops once the request is placed elsewhere, and a
worker whose heartbeats do not offer to answer gets plain publishes."""

from __future__ import annotations

import asyncio
import time

from loraplex import acked
from loraplex.bus import Bus, RawMessage
from loraplex.protocol import (
    PrefillAssign,
    RequestProgress,
    StreamAck,
    Subjects,
    SubmitReply,
    SubmitRequest,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from tests.scheduler.test_service_recovery import FakeWorker
from tests.scheduler.waiting import until


class LossyWorker(FakeWorker):
    """Heart-beats as a colocated worker; drops the first ``lose`` copies of each assignment
    (as a dying NATS node would) and answers the rest, unless ``mute``."""

    def __init__(self, bus: Bus, worker_id: str, acks: bool = True, lose: int = 0) -> None:
        super().__init__(bus, worker_id)
        self.acks_assignments, self.lose = acks, lose
        self.copies: list[tuple[float, PrefillAssign, bool]] = []  # (when, what, as a request)
        self.mute = False

    async def start(self) -> None:
        await self.bus.subscribe_raw(Subjects.worker(self.id), self._on_raw)
        self._task = asyncio.create_task(self._beat())

    async def _on_raw(self, raw: RawMessage) -> None:
        msg = decode(raw.data, PrefillAssign)
        self.copies.append((time.monotonic(), msg, bool(raw.reply)))
        seen = sum(c.request.request_id == msg.request.request_id for _, c, _ in self.copies)
        if raw.reply and not self.mute and seen > self.lose:
            await raw.respond(encode(StreamAck(msg.request.request_id)))

    def of(self, rid: str) -> list[tuple[float, PrefillAssign, bool]]:
        return [c for c in self.copies if c[1].request.request_id == rid]


async def _submit(bus: Bus, rid: str) -> float:
    sub = SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
    raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
    assert decode(raw.data, SubmitReply).accepted
    return time.monotonic()


async def _scheduler(nats_url: str, **kw: float) -> tuple[SchedulerService, Bus]:
    # A long grace: only the resend can recover a lost assignment within these tests.
    settings = SchedulerSettings(nats_url, lost_request_grace_s=30.0, **kw)  # type: ignore[arg-type]
    service = SchedulerService(settings, {})
    await service.start()
    return service, await Bus.connect(nats_url, "test")


def test_a_lost_assignment_is_sent_again_until_answered_then_no_more(nats_url, monkeypatch):
    monkeypatch.setattr(acked, "ATTEMPT_S", 0.3)

    async def run() -> None:
        service, bus = await _scheduler(nats_url)
        worker = LossyWorker(bus, "w-a", lose=2)
        await worker.start()
        await until(lambda: service.registry.can_serve())
        sent = await _submit(bus, "r1")
        await until(lambda: len(worker.of("r1")) == 3, timeout=5.0)
        copies = worker.of("r1")
        assert all(as_request for _, _, as_request in copies)
        assert {(c.attempt, c.epoch) for _, c, _ in copies} == {(0, service.epoch)}
        assert copies[-1][0] - sent < 5.0  # two tries (0.3 s each), not the 30-s grace
        await asyncio.sleep(1.0)
        assert len(worker.of("r1")) == 3  # answered: no more copies
        assert service.outbox.assignments is not None
        assert service.outbox.assignments.retried == 2
        assert service.outbox.assignments.undelivered == 0
        progress = RequestProgress("r1", "t", "w-a", "finished", completion_tokens=4)
        await bus.publish(Subjects.USAGE, progress)
        await until(lambda: "r1" not in service.inflight)
        worker.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_resending_stops_when_the_request_is_placed_elsewhere(nats_url, monkeypatch):
    """A worker that never answers and then dies: the heartbeat timeout places the request on the
    other worker (attempt 1), and the dead one gets no more copies of attempt 0."""
    monkeypatch.setattr(acked, "ATTEMPT_S", 0.2)

    async def run() -> None:
        service, bus = await _scheduler(nats_url, heartbeat_timeout_s=0.8)
        a, b = LossyWorker(bus, "w-a"), LossyWorker(bus, "w-b")
        a.mute = b.mute = True
        await a.start()
        await until(lambda: service.registry.can_serve())
        await _submit(bus, "r1")
        await until(lambda: len(a.of("r1")) >= 2)  # resent while unanswered
        await b.start()
        b.mute = False
        await until(lambda: "w-b" in service.registry.workers)
        a.beating = False
        await until(lambda: len(b.of("r1")) >= 1, timeout=5.0)
        assert b.of("r1")[0][1].attempt == 1
        stopped_at = len(a.of("r1"))
        await asyncio.sleep(1.0)
        assert len(a.of("r1")) <= stopped_at + 1  # at most one try already on its way
        assert {c.attempt for _, c, _ in a.of("r1")} == {0}
        a.stop()
        b.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_a_worker_that_does_not_offer_to_answer_gets_one_plain_publish(nats_url):
    async def run() -> None:
        service, bus = await _scheduler(nats_url)
        worker = LossyWorker(bus, "w-a", acks=False)
        await worker.start()
        await until(lambda: service.registry.can_serve())
        await _submit(bus, "r1")
        await until(lambda: len(worker.of("r1")) == 1)
        await asyncio.sleep(1.5)
        assert [as_request for _, _, as_request in worker.of("r1")] == [False]
        worker.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())
