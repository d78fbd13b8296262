"""``Takeover``: what a new leader does with its predecessor's ledger and running charges (pure)."""

from __future__ import annotations

import dataclasses

from loraplex.protocol import RequestProgress, SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.ledger import LedgerEntry
from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.policies.vtc import VTCPolicy
from loraplex.scheduler.takeover import Takeover
from loraplex.scheduler.workers import WorkerRegistry


def heartbeat(worker: str, active: list[str]) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker, role="both", free_blocks=64, total_blocks=64, block_size=16,
        running=len(active), waiting=0, max_num_seqs=4, active=active,
    )  # fmt: skip


def submit(rid: str, tenant: str = "A", tokens_received: int = 0) -> SubmitRequest:
    return SubmitRequest(
        rid, tenant, "gw", list(range(10)), SamplingParams(max_tokens=6), resubmit=True,
        tokens_received=tokens_received,
    )  # fmt: skip


def entry(rid: str, worker: str = "w0", tenant: str = "A") -> LedgerEntry:
    return LedgerEntry(rid, tenant, worker, "", 0, 10, 16)


def setup() -> tuple[Takeover, VTCPolicy, WorkerRegistry]:
    registry = WorkerRegistry()
    registry.heartbeat(heartbeat("w0", []), 0.0)
    policy = VTCPolicy()
    # The predecessor admitted r1 (charged 10 prompt tokens) before its last counter save.
    policy.enqueue(QueuedRequest("r1", "A", 10, 6, 0.0), 0.0)
    policy.admit(QueuedRequest("r1", "A", 10, 6, 0.0), 0.0)
    return Takeover(registry, policy, claim_s=2.0), policy, registry


def test_ledger_capacity_is_committed_at_once_and_claims_keep_their_charges():
    t, policy, registry = setup()
    t.begin({"r1": entry("r1"), "r2": entry("r2")}, running={"r1"}, now=0.0)
    assert set(registry.workers["w0"].requests) == {"r1", "r2"}  # nothing over-placed on w0
    job = t.claim(submit("r1", tokens_received=3), now=0.1)
    assert job is not None and job.tokens_sent and job.placement.prefill == "w0"
    assert policy.counters()["A"] == 10.0  # already charged: not charged again
    # r2 was admitted after the last save: its admission is charged when it is claimed.
    assert t.claim(submit("r2"), now=0.2) is not None
    assert policy.counters()["A"] == 20.0
    assert t.claim(submit("r3"), now=0.3) is None  # never placed: the service queues it


def test_unclaimed_entries_are_cancelled_and_settled_after_the_window():
    t, policy, registry = setup()
    t.begin({"r1": entry("r1")}, running={"r1"}, now=0.0)
    assert t.expire(now=1.0) == []  # still inside the claim window
    cancels = t.expire(now=2.5)
    assert [(w, c.request_id) for w, c in cancels] == [("w0", "r1")]
    assert "r1" not in registry.workers["w0"].requests and policy.num_running() == 0


def test_a_heartbeat_frees_the_capacity_of_what_finished_in_the_gap():
    t, _, registry = setup()
    t.begin({"r1": entry("r1"), "r2": entry("r2")}, running={"r1"}, now=0.0)
    t.on_heartbeat(heartbeat("w0", ["r2"]))
    assert set(registry.workers["w0"].requests) == {"r2"}
    assert "r1" in t.pending  # a late claim still finds it


def test_reports_on_unclaimed_requests_settle_their_charges():
    t, policy, registry = setup()
    t.begin({"r1": entry("r1")}, running={"r1"}, now=0.0)
    common = {"request_id": "r1", "tenant": "A", "worker_id": "w0"}
    assert t.on_progress(RequestProgress(event="tokens", new_tokens=2, **common))
    assert t.on_progress(RequestProgress(event="finished", completion_tokens=6, **common))
    assert policy.counters()["A"] == 10.0 + 2 * 6  # prompt + w_q x all 6 output tokens
    assert not t.pending and "r1" not in registry.workers["w0"].requests
    assert not t.on_progress(RequestProgress(event="tokens", new_tokens=1, **common))


def test_a_queued_request_the_snapshot_counted_as_running_is_settled_before_requeueing():
    t, policy, _ = setup()
    t.begin({}, running={"r1"}, now=0.0)  # admitted, but the leader died before placing it
    t.settle("r1")
    policy.enqueue(QueuedRequest("r1", "A", 10, 6, 1.0), 1.0)  # no duplicate-id error


def test_a_claimed_request_can_migrate_at_once_from_the_gateway_s_ids_and_the_reports_heard():
    """Reports on r1 heard after the takeover (tokens 2..3) join the ids its gateway resubmits
    with (0..2): the claimed job is resumable from all four tokens; without the gateway's ids it
    is not (the old leader's log died with it)."""
    t, _, _ = setup()
    t.begin({"r1": entry("r1"), "r2": entry("r2")}, running={"r1", "r2"}, now=0.0)
    for rid in ("r1", "r2"):
        for i, tok in ((2, 52), (3, 53)):
            t.on_progress(RequestProgress(rid, "A", "w0", "tokens", new_tokens=1,
                                          completion_tokens=i + 1, token_ids=[tok]))  # fmt: skip
    sub = submit("r1", tokens_received=3)
    job = t.claim(dataclasses.replace(sub, received_token_ids=[50, 51, 52]), now=0.1)
    assert job is not None and job.completion_tokens == 4
    assert job.generated == [50, 51, 52, 53] and job.tokens.resumable(6, job.completion_tokens)
    assert job.submit.received_token_ids is None  # its assignments do not carry them
    blind = t.claim(submit("r2", tokens_received=3), now=0.1)
    assert blind is not None and not blind.tokens.resumable(6, blind.completion_tokens)


def test_the_adapters_of_adopted_entries_count_on_their_workers():
    t, _, registry = setup()
    sql = dataclasses.replace(entry("r1"), adapter="sql")
    assert LedgerEntry.from_json(sql.to_json()) == sql
    older = '{"request_id":"r2","tenant":"A","prefill":"w0","decode":"","attempt":0,'
    older += '"prompt_tokens":10,"total_tokens":16}'  # written by a leader before adapters
    assert LedgerEntry.from_json(older) == entry("r2")
    t.begin({"r1": sql, "r2": entry("r2")}, running={"r1"}, now=0.0)
    assert registry.workers["w0"].adapter_runs == {"sql": 1}  # its slot counts before a heartbeat
    t.on_heartbeat(heartbeat("w0", ["r2"]))  # r1 finished in the gap
    assert registry.workers["w0"].adapter_runs == {}
