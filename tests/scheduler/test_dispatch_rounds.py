"""Dispatch rounds: each placement is claimed before the next decision, a round's ledger entries
go in one write before any of its assignments is published, and nothing is published once the
write says this replica no longer leads."""

from __future__ import annotations

import asyncio

from loraplex.protocol import Message, PrefillAssign, SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.dispatcher import ROUND, Dispatcher
from loraplex.scheduler.ledger import LedgerEntry
from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.prefix_affinity import PrefixAffinity
from loraplex.scheduler.recovery import InFlight
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry


def _dispatcher(leading: bool, slots: int) -> tuple[Dispatcher, list, list[str]]:
    """A dispatcher over two colocated workers with ``slots`` batch slots each; returns it, the
    ledger writes it made (each a list of entries) and, in order, what it did."""
    registry = WorkerRegistry()
    for wid in ("w0", "w1"):
        registry.heartbeat(WorkerHeartbeat(wid, "both", 0, 10_000, 16, 0, 0, slots), 0.0)
    writes: list[list[LedgerEntry]] = []
    events: list[str] = []
    queued: dict[str, SubmitRequest] = {}
    inflight: dict[str, InFlight] = {}

    async def record(entries: list[LedgerEntry]) -> bool:
        writes.append(entries)
        events.append(f"write {len(entries)}")
        return leading

    async def publish(subject: str, msg: Message) -> None:
        assert isinstance(msg, PrefillAssign)
        # published only after its entry was written, and with its capacity already claimed
        assert any(e.request_id == msg.request.request_id for w in writes for e in w)
        events.append(f"assign {msg.request.request_id}")

    d = Dispatcher(
        SchedulerSettings("nats://unused"),
        make_policy("vtc"),
        registry,
        PrefixAffinity(),
        queued=queued,
        inflight=inflight,
        retry=[],
        publish=publish,
        record=record,
        counters_changed=lambda: None,
        on_admit=lambda q, now: None,
    )
    for i in range(150):
        sub = SubmitRequest(f"r{i:03d}", f"t{i % 7}", "gw", [1, 2, 3], SamplingParams(max_tokens=4))
        queued[sub.request_id] = sub
        d.policy.enqueue(QueuedRequest(sub.request_id, sub.tenant, 3, 4, 0.0), 0.0)
    return d, writes, events


def test_a_round_writes_its_ledger_entries_once_then_publishes_them() -> None:
    d, writes, events = _dispatcher(leading=True, slots=50)  # room for 100 of the 150
    asyncio.run(d.dispatch(1.0))
    assert [len(w) for w in writes] == [ROUND, 100 - ROUND]
    assert events[0] == f"write {ROUND}" and events[ROUND + 1] == f"write {100 - ROUND}"
    assert len(d.inflight) == 100 and sum(e.startswith("assign") for e in events) == 100
    # every decision saw the ones before it: 50 on each worker, never more
    held = [len(w.requests) for w in d.registry.workers.values()]
    assert held == [50, 50]
    assert d.stalled is not None  # the 101st waits for room


def test_nothing_is_published_when_the_write_says_this_replica_no_longer_leads() -> None:
    d, writes, events = _dispatcher(leading=False, slots=50)
    asyncio.run(d.dispatch(1.0))
    assert len(writes) == 1 and not any(e.startswith("assign") for e in events)
