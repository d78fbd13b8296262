"""The scheduler's failure paths on a real NATS server, with scripted workers: waiting requests fail
within the unavailable bound, retries avoid the worker that just failed, a lost hand-off report
does not fail a request its decode worker serves, and cancels reach the work wherever it is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

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
    decode,
    encode,
)
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.terminal import serve_stream
from tests.scheduler.waiting import until as _until


@dataclass
class ScriptedWorker:
    """Heart-beats with a role and the ids it holds; records assignments and cancels."""

    bus: Bus
    id: str
    role: str = "both"
    beating: bool = True
    held: set[str] = field(default_factory=set)
    assigned: list[PrefillAssign] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    _task: asyncio.Task | None = None

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
                hb = WorkerHeartbeat(
                    self.id,
                    self.role,
                    100,
                    100,
                    16,
                    0,
                    0,
                    8,
                    ts=time.time(),
                    active=sorted(self.held),
                )
                await self.bus.publish(Subjects.HEARTBEAT, hb)
            await asyncio.sleep(0.1)

    async def report(self, rid: str, event: str, **kw) -> None:  # type: ignore[no-untyped-def]
        await self.bus.publish(Subjects.USAGE, RequestProgress(rid, "t", self.id, event, **kw))

    def ids(self) -> list[str]:
        return [a.request.request_id for a in self.assigned]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Harness:
    """A scheduler, a test bus, scripted workers and the errors published to gateway ``gw``."""

    def __init__(self, nats_url: str, **settings) -> None:  # type: ignore[no-untyped-def]
        self.service = SchedulerService(SchedulerSettings(nats_url, **settings), {})
        self.nats_url = nats_url
        self.errors: list[RequestError] = []
        self.workers: list[ScriptedWorker] = []

    async def __aenter__(self) -> Harness:
        await self.service.start()
        self.bus = await Bus.connect(self.nats_url, "test")

        async def on_error(m: RequestError) -> None:
            self.errors.append(m)

        await serve_stream(self.bus, "gw", on_error, RequestError)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        await self.bus.close()
        await self.service.stop()

    async def worker(self, wid: str, role: str = "both") -> ScriptedWorker:
        w = ScriptedWorker(self.bus, wid, role)
        await w.start()
        self.workers.append(w)
        await self.bus.flush()
        await _until(lambda: wid in self.service.registry.workers)
        return w

    async def submit(self, rid: str) -> SubmitReply:
        sub = SubmitRequest(rid, "t", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
        raw = await self.bus.nc.request(Subjects.SUBMIT, encode(sub), timeout=5)
        return decode(raw.data, SubmitReply)

    def error_for(self, rid: str) -> RequestError | None:
        return next((e for e in self.errors if e.request_id == rid), None)


def test_waiting_requests_fail_within_the_unavailable_bound(nats_url):
    """Requests queued behind the only worker when it dies get a 503 within heartbeat timeout +
    unavailable timeout, not the gateway's request timeout; the one it was serving too."""

    async def run() -> None:
        async with Harness(
            nats_url, heartbeat_timeout_s=0.5, unavailable_timeout_s=0.5, max_attempts=3
        ) as h:
            only = await h.worker("w-a")
            only.held.add("x")  # full: max_num_seqs is 8, so 8 run and the rest wait
            for i in range(12):
                assert (await h.submit(f"r{i}")).accepted
            await _until(lambda: len(only.assigned) == 8)
            assert len(h.service.submits) == 4
            only.beating = False
            died = time.monotonic()
            await _until(lambda: all(h.error_for(f"r{i}") for i in range(12)), timeout=5)
            assert time.monotonic() - died < 0.5 + 0.5 + 1.5
            assert all(h.error_for(f"r{i}").code == 503 for i in range(12))  # type: ignore[union-attr]
            assert "no worker could serve" in h.error_for("r11").message  # type: ignore[union-attr]
            assert not h.service.submits and not h.service.retry and not h.service.inflight

    asyncio.run(run())


def test_retry_avoids_the_decode_worker_reported_unreachable(nats_url):
    """A prefill worker's K/V hand-over finds its decode worker gone (no responders): the retry
    goes to the other decode worker at once, not back to the dead one that still looks idle."""

    async def run() -> None:
        async with Harness(nats_url, heartbeat_timeout_s=5.0, max_attempts=3) as h:
            prefill = await h.worker("p", "prefill")
            d_a = await h.worker("d-a", "decode")
            d_b = await h.worker("d-b", "decode")
            assert (await h.submit("r1")).accepted
            await _until(lambda: len(prefill.assigned) == 1)
            first = prefill.assigned[0].decode_worker
            dead = d_a if first == "d-a" else d_b
            dead.beating = False  # died: its last heartbeat still says idle for 5 s
            await prefill.report("r1", "failed", message="no responders", suspect=first)
            await _until(lambda: len(prefill.assigned) == 2, timeout=2)
            assert prefill.assigned[1].decode_worker != first
            # A suspect comes back with its next heartbeat (it was only slow).
            dead.beating = True
            await _until(lambda: not h.service.registry.workers[first].suspect, timeout=2)

    asyncio.run(run())


@pytest.mark.parametrize("grace", [0.2, 10.0], ids=["held-check", "death"])
def test_lost_handoff_report_does_not_fail_a_decoding_request(nats_url, grace):
    """The prefill worker dies right after the K/V got across, before its hand-off report: the
    decode worker lists the request, so it is not failed or re-dispatched (whether the prefill
    worker's heartbeats first stop listing it, or its death is noticed first)."""

    async def run() -> None:
        async with Harness(
            nats_url, heartbeat_timeout_s=0.5, lost_request_grace_s=grace, max_attempts=3
        ) as h:
            prefill = await h.worker("p", "prefill")
            dec = await h.worker("d", "decode")
            assert (await h.submit("r1")).accepted
            await _until(lambda: len(prefill.assigned) == 1)
            dec.held.add("r1")  # the K/V arrived; the hand-off report is lost with the worker
            await asyncio.sleep(min(4 * grace, 1.0))  # "held-check": the prefill stops listing it
            prefill.beating = False
            await asyncio.sleep(1.5)  # three heartbeat timeouts
            assert h.error_for("r1") is None and len(prefill.assigned) == 1
            job = h.service.inflight["r1"]
            assert job.prefill_done and job.workers == {"d"}
            await dec.report("r1", "finished", completion_tokens=4)
            await _until(lambda: "r1" not in h.service.inflight)

    asyncio.run(run())


def test_decode_tokens_release_the_prefill_without_a_handoff_report(nats_url):
    async def run() -> None:
        async with Harness(nats_url, max_attempts=3) as h:
            prefill = await h.worker("p", "prefill")
            dec = await h.worker("d", "decode")
            assert (await h.submit("r1")).accepted
            await _until(lambda: len(prefill.assigned) == 1)
            await dec.report("r1", "tokens", new_tokens=1, completion_tokens=1)
            await _until(lambda: h.service.inflight["r1"].prefill_done)
            assert "r1" not in h.service.registry.workers["p"].requests

    asyncio.run(run())


def test_a_handoff_to_an_earlier_attempts_decode_worker_is_not_this_attempts(nats_url):
    """Re-placed after its decode worker was declared dead, a request's prefill worker may still
    report the earlier attempt's hand-off (the K/V went to the old decode worker).  That report
    must not make the new decode worker the holder: it never gets the K/V, and the request would
    fail as "does not hold the request" (seen in the chaos soak)."""

    async def run() -> None:
        async with Harness(nats_url, heartbeat_timeout_s=5.0, max_attempts=3) as h:
            prefill = await h.worker("p", "prefill")
            await h.worker("d-a", "decode")
            await h.worker("d-b", "decode")
            assert (await h.submit("r1")).accepted
            await _until(lambda: len(prefill.assigned) == 1)
            first = prefill.assigned[0].decode_worker
            await prefill.report("r1", "failed", message="no responders", suspect=first)
            await _until(lambda: len(prefill.assigned) == 2, timeout=2)
            second = prefill.assigned[1].decode_worker
            assert second != first
            await prefill.report("r1", "handoff", decode_worker=first)  # the earlier attempt's
            await asyncio.sleep(0.3)
            job = h.service.inflight["r1"]
            assert not job.prefill_done and job.holder == "p"
            await prefill.report("r1", "handoff", decode_worker=second)
            await _until(lambda: h.service.inflight["r1"].prefill_done)
            assert h.service.inflight["r1"].holder == second

    asyncio.run(run())


def test_cancel_reaches_requests_waiting_for_a_retry_and_late_workers(nats_url):
    """A cancel for a request waiting to be re-placed drops it (it is never dispatched again); a
    worker still reporting tokens for a cancelled request is told again."""

    async def run() -> None:
        async with Harness(nats_url, heartbeat_timeout_s=5.0, max_attempts=3) as h:
            w = await h.worker("w")
            assert (await h.submit("r1")).accepted
            await _until(lambda: len(w.assigned) == 1)
            w.beating = False  # suspect and silent: the retry has nowhere to go
            await w.report("r1", "failed", message="refused", suspect="w")
            await _until(lambda: bool(h.service.retry), timeout=2)
            await h.bus.publish(Subjects.CANCEL, CancelRequest("r1"))
            await _until(lambda: not h.service.retry, timeout=2)
            w.beating = True
            await _until(lambda: not h.service.registry.workers["w"].suspect, timeout=2)
            await asyncio.sleep(0.3)
            assert len(w.assigned) == 1 and "r1" not in h.service.inflight

            # Late tokens from a worker for the cancelled request: the cancel is sent again.
            before = len(w.cancels)
            await w.report("r1", "tokens", new_tokens=1, completion_tokens=1)
            await _until(lambda: len(w.cancels) > before, timeout=2)
            assert w.cancels[-1] == "r1"

    asyncio.run(run())
