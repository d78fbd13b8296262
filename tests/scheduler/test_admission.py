"""Admission's answers from the registry: a scheduler that has heard heartbeats for a whole
heartbeat window and has known no worker set for ``--unavailable-timeout`` refuses with 503; one
that has just started (a restarted leader, a fresh replica) queues instead, since its empty
registry says nothing yet, and so does one whose workers went away moments ago (restarting)."""

from __future__ import annotations

from loraplex.protocol import SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.admission import refusal
from loraplex.scheduler.policies.registry import make_policy
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.scheduler.workers import WorkerRegistry

SETTINGS = SchedulerSettings(nats_url="nats://unused:1", heartbeat_timeout_s=3.0)


def _submit(prompt: int = 20, max_tokens: int = 20) -> SubmitRequest:
    return SubmitRequest("r", "alice", "gw", list(range(prompt)), SamplingParams(max_tokens=max_tokens))  # fmt: skip


def _answer(registry: WorkerRegistry, listening_s: float, sub: SubmitRequest | None = None,  # type: ignore[no-untyped-def]
            outage_s: float = 60.0):  # fmt: skip
    policy = make_policy("vtc")
    return refusal(sub or _submit(), registry, policy, SETTINGS, 0, listening_s, outage_s)


def test_no_worker_after_a_heartbeat_window_is_a_503() -> None:
    reply = _answer(WorkerRegistry(), listening_s=3.0)
    assert reply is not None and reply.code == 503


def test_no_worker_yet_just_after_start_queues_the_request() -> None:
    assert _answer(WorkerRegistry(), listening_s=0.02) is None  # the restarted-leader race


def test_workers_gone_moments_ago_queue_the_request_until_the_wait_has_passed() -> None:
    """Both decode workers killed and restarting: for ``--unavailable-timeout`` (5 s) of the
    outage a request waits with those queued before it, then the answer is a 503 at once."""
    assert _answer(WorkerRegistry(), listening_s=30.0, outage_s=0.0) is None
    assert _answer(WorkerRegistry(), listening_s=30.0, outage_s=4.9) is None
    reply = _answer(WorkerRegistry(), listening_s=30.0, outage_s=5.0)
    assert reply is not None and reply.code == 503


def test_a_request_no_worker_could_ever_hold_is_a_400_once_workers_are_known() -> None:
    registry = WorkerRegistry()
    registry.heartbeat(WorkerHeartbeat("w0", "both", 4, 4, 16, 0, 0, 4), 0.0)  # 64 tokens
    assert _answer(registry, 0.0) is None
    reply = _answer(registry, 0.0, _submit(prompt=60, max_tokens=20))
    assert reply is not None and reply.code == 400


def test_a_tenants_own_queue_limit_replaces_the_flags() -> None:
    """The tenants file's ``max_queue``: a tenant with 2 queued is full at 2, another at the
    flag's limit; the service takes the limits from the file and from each later version."""
    from loraplex.scheduler.policies.base import QueuedRequest

    registry = WorkerRegistry()
    registry.heartbeat(WorkerHeartbeat("w0", "both", 64, 64, 16, 0, 0, 4), 0.0)
    policy = make_policy("vtc")
    for i in range(2):
        policy.enqueue(QueuedRequest(f"q{i}", "alice", 4, 4, 0.0, None), 0.0)
    sub = _submit()
    assert refusal(sub, registry, policy, SETTINGS, 2, 30.0, 0.0, tenant_limit=3) is None
    full = refusal(sub, registry, policy, SETTINGS, 2, 30.0, 0.0, tenant_limit=2)
    assert full is not None and full.code == 429 and "2 requests queued" in full.message
    assert refusal(sub, registry, policy, SETTINGS, 2, 30.0, 0.0) is None  # the flag: 256


def test_the_service_follows_the_files_queue_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from loraplex.scheduler.service import SchedulerService
    from loraplex.tenants_watch import LiveTenants

    path = tmp_path / "tenants.json"
    doc = {"tenants": [{"name": "alice", "api_key": "k1", "max_queue": 5}, {"name": "bob", "api_key": "k2"}]}  # fmt: skip
    path.write_text(json.dumps(doc))
    live = LiveTenants(path)
    service = SchedulerService(SETTINGS, live.current.weights())
    service.follow_tenants(live)
    assert service.intake.queue_limits == {"alice": 5}
    doc["tenants"][1]["max_queue"] = 1
    del doc["tenants"][0]["max_queue"]
    path.write_text(json.dumps(doc))
    assert live.check() and service.intake.queue_limits == {"bob": 1}
