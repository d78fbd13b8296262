"""Request migration in the scheduler: the token log it keeps from workers' progress reports
(unit), and, on a real NATS server with scripted workers, a request whose worker dies after
streaming is placed again with its tokens so far, until ``--max-attempts`` placements, after
which it fails with a 503 naming the cause."""

from __future__ import annotations

import asyncio
import time

from loraplex.bus import Bus
from loraplex.protocol import (
    CancelRequest,
    PrefillAssign,
    RequestError,
    RequestProgress,
    Subjects,
    SubmitReply,
    SubmitRequest,
    WorkerHeartbeat,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.migration import TokenLog
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.terminal import serve_stream
from tests.scheduler.waiting import until


# ---- the token log (pure) ----------------------------------------------------------------------
def test_token_log_places_reports_by_index():
    log = TokenLog()
    log.record([11], 1, 1)
    log.record([12, 13], 2, 3)
    assert log.ids == [11, 12, 13] and log.resumable(max_tokens=4)
    log.record([11, 12, 13], 3, 3)  # a resumed worker's replay: the same tokens, nothing changes
    log.record([14], 1, 4)
    assert log.ids == [11, 12, 13, 14]
    log.record([12], 1, 2)  # a late duplicate rewrites its own index, never truncates
    assert log.ids == [11, 12, 13, 14]
    assert not log.resumable(max_tokens=4)  # nothing left to generate


def test_token_log_breaks_on_a_gap_or_counts_without_ids():
    gap = TokenLog()
    gap.record([1], 1, 1)
    gap.record([3], 1, 3)  # token 2's report never came
    assert gap.broken and not gap.resumable(100)
    old = TokenLog()
    old.record([], 2, 2)  # a worker that reports counts only (before migration)
    assert old.broken and not old.resumable(100)
    adopted = TokenLog()  # a new scheduler leader adopted it with a count of 5, no ids
    assert not adopted.resumable(100, reported=5) and adopted.resumable(100, reported=0)


def test_a_snapshot_makes_a_broken_token_log_whole_again():
    """A lost report leaves a gap; the worker's next snapshot (all ids so far) repairs it, and a
    snapshot whose length is not the reported count is ignored."""
    log = TokenLog()
    log.record([1], 1, 1)
    log.record([3], 1, 3)  # token 2's report was lost
    assert log.broken
    log.snapshot([1, 2, 3, 4], 5)  # not the count: ignored
    assert log.broken and not log.resumable(100)
    log.record([4], 1, 4)
    log.snapshot([1, 2, 3, 4], 4)
    assert not log.broken and log.ids == [1, 2, 3, 4] and log.resumable(100)
    log.record([5], 1, 5)  # and it goes on from there
    assert log.ids == [1, 2, 3, 4, 5]


# ---- the service on real NATS ------------------------------------------------------------------
class Worker:
    """A colocated worker that heart-beats while ``beating`` and records its assignments."""

    def __init__(self, bus: Bus, worker_id: str) -> None:
        self.bus, self.id = bus, worker_id
        self.assigned: list[PrefillAssign] = []
        self.cancels: list[str] = []
        self.beating = True
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        async def on_control(m: PrefillAssign | CancelRequest) -> None:
            if isinstance(m, PrefillAssign):
                self.assigned.append(m)
            else:
                self.cancels.append(m.request_id)

        await self.bus.subscribe(
            Subjects.worker(self.id), on_control, (PrefillAssign, CancelRequest)
        )
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            if self.beating:
                hb = WorkerHeartbeat(self.id, "both", 100, 100, 16, 0, 0, 8, ts=time.time())
                await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.1)

    async def tokens(self, rid: str, ids: list[int], done: int) -> None:
        p = RequestProgress(
            rid, "t", self.id, "tokens", len(ids), 3, done + len(ids), token_ids=ids
        )
        await self.bus.publish(Subjects.USAGE, p)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def _setup(nats_url: str, n: int, max_attempts: int):  # type: ignore[no-untyped-def]
    settings = SchedulerSettings(nats_url, heartbeat_timeout_s=0.6, max_attempts=max_attempts)
    service = SchedulerService(settings, {})
    await service.start()
    bus = await Bus.connect(nats_url, "test")
    workers = [Worker(bus, f"w-{i}") for i in range(n)]
    for w in workers:
        await w.start()
    errors: list[RequestError] = []

    async def on_error(m: RequestError) -> None:
        errors.append(m)

    await serve_stream(bus, "gw", on_error, RequestError)
    await bus.flush()
    await until(lambda: len(service.registry.workers) == n)
    return service, bus, workers, errors


async def _submit(bus: Bus, rid: str, max_tokens: int = 32) -> None:
    sub = SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=max_tokens))
    assert (await bus.request(Subjects.SUBMIT, sub, SubmitReply, 5)).accepted


def _holder(workers: list[Worker], rid: str) -> tuple[Worker, PrefillAssign]:
    """The worker given the request's latest assignment, and that assignment."""
    latest = [(a.attempt, w, a) for w in workers for a in w.assigned if a.request.request_id == rid]
    _, w, a = max(latest, key=lambda t: t[0])
    return w, a


def test_a_request_whose_worker_dies_mid_stream_migrates_until_max_attempts(nats_url):
    async def run() -> None:
        service, bus, workers, errors = await _setup(nats_url, 3, max_attempts=3)
        await _submit(bus, "m")
        await until(lambda: any(w.assigned for w in workers))
        first, a0 = _holder(workers, "m")
        assert a0.attempt == 0 and a0.generated == []
        await first.tokens("m", [40, 41], 0)
        await first.tokens("m", [42], 2)
        await until(lambda: service.inflight["m"].tokens.ids == [40, 41, 42])
        first.beating = False  # dies after streaming three tokens: migrated, not failed

        await until(lambda: _holder(workers, "m")[1].attempt == 1)
        second, a1 = _holder(workers, "m")
        assert second is not first and a1.generated == [40, 41, 42]
        assert service.recovery.migrated == 1 and not errors
        # The resumed worker replays nothing to the scheduler: it reports from index 3 on.
        await second.tokens("m", [43], 3)
        await until(lambda: service.inflight["m"].tokens.ids == [40, 41, 42, 43])
        # The first worker was not dead after all: its late tokens are ignored and it is told
        # to stop, so two copies never stream.
        await first.tokens("m", [99], 3)
        await until(lambda: "m" in first.cancels)
        assert service.inflight["m"].tokens.ids == [40, 41, 42, 43]
        second.beating = False

        await until(lambda: _holder(workers, "m")[1].attempt == 2)
        third, a2 = _holder(workers, "m")
        assert third not in (first, second) and a2.generated == [40, 41, 42, 43]
        third.beating = False  # the third placement dies too: --max-attempts 3 is spent
        await until(lambda: any(e.request_id == "m" for e in errors))
        (err,) = [e for e in errors if e.request_id == "m"]
        assert err.code == 503
        assert "3 attempt(s)" in err.message and f"worker {third.id} stopped responding" in (
            err.message
        )
        assert "m" not in service.inflight and not service.retry
        for w in workers:
            w.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_a_request_whose_tokens_are_not_known_fails_instead_of_migrating(nats_url):
    async def run() -> None:
        service, bus, workers, errors = await _setup(nats_url, 2, max_attempts=3)
        await _submit(bus, "old")
        await until(lambda: any(w.assigned for w in workers))
        holder, _ = _holder(workers, "old")
        # Counts without ids (a worker from before migration): resuming would lose tokens.
        p = RequestProgress("old", "t", holder.id, "tokens", 2, 3, 2)
        await bus.publish(Subjects.USAGE, p)
        await until(lambda: service.inflight["old"].tokens_sent)
        holder.beating = False
        await until(lambda: any(e.request_id == "old" for e in errors))
        assert "not known" in errors[0].message and errors[0].code == 503
        assert sum(len(w.assigned) for w in workers) == 1
        for w in workers:
            w.stop()
        await bus.close()
        await service.stop()

    asyncio.run(run())


def test_an_adopted_request_s_log_joins_the_gateway_s_ids_and_the_reports_since_the_takeover():
    """A new leader adopts a request with the ids its gateway received (0..4) and the reports it
    heard since it took over (3..6): together they are whole.  A hole between the two, or no ids
    from the gateway, leaves the log unusable until a snapshot."""
    tail = TokenLog.tail()
    tail.record([13], 1, 4)
    tail.record([14, 15], 2, 6)
    tail.record([16], 1, 7)
    assert (tail.start, tail.end) == (3, 7)
    log = TokenLog()
    log.adopt([10, 11, 12, 13, 14], tail)
    assert log.ids == [10, 11, 12, 13, 14, 15, 16] and log.resumable(100, reported=5)
    log.record([17], 1, 8)  # the reports after the claim go on from there
    assert log.ids[-1] == 17 and not log.broken
    hole = TokenLog()
    hole.adopt([10, 11], tail)  # the gateway lags behind the first report heard
    assert hole.broken and not hole.resumable(100, reported=2)
    blind = TokenLog()
    blind.adopt(None, tail)
    assert blind.broken
    nothing = TokenLog()
    nothing.adopt([10, 11], TokenLog.tail())  # no report since the takeover: the gateway's ids
    assert nothing.ids == [10, 11] and nothing.resumable(100, reported=2)


def test_a_token_tail_breaks_on_a_gap_and_a_snapshot_makes_it_whole():
    tail = TokenLog.tail()
    tail.record([13], 1, 4)
    tail.record([15], 1, 6)  # token 4's report never came
    assert tail.broken
    tail.snapshot([10, 11, 12, 13, 14, 15], 6)
    assert (tail.start, tail.ids, tail.broken) == (0, [10, 11, 12, 13, 14, 15], False)
    log = TokenLog()
    log.adopt(None, tail)  # whole from the first token: the gateway's ids are not needed
    assert log.resumable(100, reported=6)
