"""The scheduler service on a real NATS server, with fake workers: failures before the first token
are re-dispatched; a worker that stops heart-beating loses its requests to the others."""

from __future__ import annotations

import asyncio
import time

from loraplex.bus import Bus
from loraplex.protocol import (
    PrefillAssign,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.terminal import serve_stream
from tests.scheduler.waiting import until as _until


class FakeWorker:
    """Heart-beats as a colocated worker and records what it is assigned."""

    def __init__(self, bus: Bus, worker_id: str) -> None:
        self.bus, self.id = bus, worker_id
        self.assigned: list[PrefillAssign] = []
        self.beating = True
        self.incarnation = "boot-1"  # a new one: the process restarted
        self.acks_assignments = False  # its heartbeats offer to answer assignments
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        async def on_assign(m: PrefillAssign) -> None:
            self.assigned.append(m)

        await self.bus.subscribe(Subjects.worker(self.id), on_assign, PrefillAssign)
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            if self.beating:
                hb = WorkerHeartbeat(
                    self.id, "both", 100, 100, 16, 0, 0, 8, ts=time.time(),
                    incarnation=self.incarnation, acks_assignments=self.acks_assignments,
                )  # fmt: skip
                await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.1)

    async def report(self, rid: str, event: str, **kw) -> None:  # type: ignore[no-untyped-def]
        await self.bus.publish(Subjects.USAGE, RequestProgress(rid, "t", self.id, event, **kw))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def test_failures_before_a_token_are_redispatched_and_dead_workers_recovered(nats_url):
    async def run() -> None:
        service = SchedulerService(
            SchedulerSettings(
                nats_url, heartbeat_timeout_s=0.6, max_attempts=3, unavailable_timeout_s=1.0
            ),
            {},
        )
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        workers = [FakeWorker(bus, "w-a"), FakeWorker(bus, "w-b")]
        for w in workers:
            await w.start()
        errors: list[RequestError] = []

        async def on_error(m: RequestError) -> None:
            errors.append(m)

        await serve_stream(bus, "gw", on_error, RequestError)
        await bus.flush()
        await _until(lambda: service.registry.can_serve())

        async def submit(rid: str) -> SubmitReply:
            sub = SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
            raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
            return decode(raw.data, SubmitReply)

        def assignments(rid: str) -> list[tuple[str, int]]:
            return [
                (w.id, a.attempt)
                for w in workers
                for a in w.assigned
                if a.request.request_id == rid
            ]

        # 1. A retryable failure before any token: dispatched again, attempt 1.
        assert (await submit("r1")).accepted
        await _until(lambda: len(assignments("r1")) == 1)
        first = assignments("r1")[0][0]
        await next(w for w in workers if w.id == first).report(
            "r1", "failed", message="K/V refused"
        )
        await _until(lambda: len(assignments("r1")) == 2)
        assert sorted(a for _, a in assignments("r1")) == [0, 1]
        second = next(w for w, a in assignments("r1") if a == 1)
        await next(w for w in workers if w.id == second).report(
            "r1", "finished", completion_tokens=4
        )
        await _until(lambda: "r1" not in service.inflight)

        # 2. The worker holding r2 goes silent before a token: r2 moves to the other worker.
        assert (await submit("r2")).accepted
        await _until(lambda: len(assignments("r2")) == 1)
        holder = next(w for w in workers if w.id == assignments("r2")[0][0])
        holder.beating = False
        await _until(lambda: len(assignments("r2")) == 2)
        assert assignments("r2")[1][0] != holder.id

        # 3. Tokens already streamed, then the worker dies: a clear error, no silent retry.
        other = next(w for w in workers if w is not holder)
        await other.report("r2", "tokens", new_tokens=1, completion_tokens=1)
        await asyncio.sleep(0.1)
        other.beating = False
        await _until(lambda: any(e.request_id == "r2" for e in errors))
        assert len(assignments("r2")) == 2 and "stopped responding" in errors[-1].message
        # ... with no live worker left, a new request waits (they may be restarting), and fails
        # with a 503 once the outage lasted --unavailable-timeout; from then on new requests
        # are refused at once.
        await _until(lambda: not service.registry.can_serve())
        assert (await submit("r3")).accepted
        await _until(lambda: any(e.request_id == "r3" for e in errors))
        assert errors[-1].code == 503 and "no worker could serve" in errors[-1].message
        reply = await submit("r4")
        assert not reply.accepted and reply.code == 503

        for w in workers:
            w.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_a_worker_restarted_within_its_heartbeat_timeout_loses_its_requests_at_once(nats_url):
    """A supervisor restarts a worker faster than the scheduler misses its heartbeats: the same id
    comes back with another incarnation.  What the old process held is gone, so its requests are
    re-dispatched at the first heartbeat of the new one (the timeout here is 30 s, and the fake
    workers list no held requests, so nothing else could recover them)."""

    async def run() -> None:
        service = SchedulerService(
            SchedulerSettings(nats_url, heartbeat_timeout_s=30.0, max_attempts=3), {}
        )
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        worker = FakeWorker(bus, "w-a")
        await worker.start()
        await bus.flush()
        await _until(lambda: service.registry.can_serve())
        sub = SubmitRequest("r1", "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
        raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
        assert decode(raw.data, SubmitReply).accepted
        await _until(lambda: len(worker.assigned) == 1)
        await asyncio.sleep(0.3)  # heartbeats of the same process change nothing
        assert len(worker.assigned) == 1
        worker.incarnation = "boot-2"
        await _until(lambda: len(worker.assigned) == 2, timeout=5.0)
        assert [a.attempt for a in worker.assigned] == [0, 1]
        assert service.inflight["r1"].last_failure == "worker w-a restarted"
        worker.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


class ListingWorker(FakeWorker):
    """Heart-beats the request ids it holds, as real workers do; ``drop`` loses assignments."""

    def __init__(self, bus: Bus, worker_id: str, drop: bool) -> None:
        super().__init__(bus, worker_id)
        self.drop = drop
        self.held: set[str] = set()

    async def start(self) -> None:
        async def on_assign(m: PrefillAssign) -> None:
            self.assigned.append(m)
            if not self.drop:
                self.held.add(m.request.request_id)

        await self.bus.subscribe(Subjects.worker(self.id), on_assign, PrefillAssign)
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            hb = WorkerHeartbeat(
                self.id, "both", 100, 100, 16, 0, 0, 8, ts=time.time(), active=sorted(self.held)
            )
            await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.1)


def test_lost_assignment_is_redispatched_and_held_ones_are_not(nats_url):
    """w-a receives its assignment but never holds it (as if it had been published while w-a
    was resubscribing): the scheduler re-dispatches it after the grace.  A request its worker
    keeps listing stays put, however long it runs."""

    async def run() -> None:
        service = SchedulerService(SchedulerSettings(nats_url, lost_request_grace_s=0.3), {})
        await service.start()
        bus = await Bus.connect(nats_url, "test")
        lossy, steady = ListingWorker(bus, "w-a", drop=True), ListingWorker(bus, "w-b", drop=False)
        for w in (lossy, steady):
            await w.start()
        await bus.flush()
        await _until(lambda: len(service.registry.workers) == 2)

        async def submit(rid: str) -> None:
            sub = SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
            raw = await bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
            assert decode(raw.data, SubmitReply).accepted

        def attempts(rid: str) -> list[tuple[str, int]]:
            return [
                (w.id, a.attempt)
                for w in (lossy, steady)
                for a in w.assigned
                if a.request.request_id == rid
            ]

        await submit("lost")  # both idle: w-a wins the tie-break, and drops it
        await _until(lambda: len(attempts("lost")) == 1)
        assert attempts("lost") == [("w-a", 0)]
        lossy.drop = False  # the next delivery (to either worker) arrives
        await _until(lambda: len(attempts("lost")) == 2)
        assert attempts("lost")[1][1] == 1
        await submit("held")
        await asyncio.sleep(1.5)  # five graces: listed requests are never moved
        assert len(attempts("lost")) == 2 and len(attempts("held")) == 1
        assert "lost" in service.inflight and "held" in service.inflight
        for w in (lossy, steady):
            w.stop()
        await service.stop()
        await bus.close()

    asyncio.run(run())
