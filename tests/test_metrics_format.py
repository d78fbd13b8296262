"""Each service's Prometheus registry, exercised in-process and checked with ``promtool check
metrics`` (Debian's prometheus package; scripts/install-system-deps.sh installs it), plus the logic
behind the series: queue depth per pool, bounded adapter labels, the gateway's readiness from the
scheduler's broadcast.  The live stack's scrapes are checked in tests/stack/test_observability.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import types

import pytest
from prometheus_client import generate_latest

from loraplex.gateway.capacity import SchedulerView, can_serve
from loraplex.gateway.metrics import BASE_ADAPTER, GatewayMetrics
from loraplex.prom import BoundedLabels
from loraplex.protocol import SchedulerStats, SubmitRequest, WorkerHeartbeat
from loraplex.sampling_params import SamplingParams
from loraplex.scheduler.metrics import blocked_pools, pool_counts
from loraplex.scheduler.service import SchedulerService
from loraplex.scheduler.settings import SchedulerSettings
from loraplex.worker.metrics import WorkerMetrics

# vLLM's names (the services' vllm_metrics.py) hold a colon, which promtool's lint flags (a naming
# convention for recording rules; Prometheus ingests them): that one note is accepted for them.
_VLLM_COLON = re.compile(r"vllm:\w+ metric names should not contain ':'")


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (install-system-deps.sh)"
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    lines = (out.stdout + out.stderr).splitlines()
    problems = [ln for ln in lines if ln.strip() and not _VLLM_COLON.fullmatch(ln.strip())]
    assert out.returncode == 0 or not problems, f"promtool check metrics:\n{problems}\n{text}"


def value(text: str, series: str) -> float:
    """The value of one exact series line (``name{labels}``) in an exposition."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in:\n{text}")


def test_promtool_refuses_what_the_old_series_were() -> None:
    """The check itself can fail: a gauge named ``_total`` (the old relayed worker gauges)."""
    bad = (
        "# HELP loraplex_worker_kv_blocks_total blocks\n"
        "# TYPE loraplex_worker_kv_blocks_total gauge\n"
        'loraplex_worker_kv_blocks_total{worker="a"} 1\n'
    )
    with pytest.raises(AssertionError, match="should not have"):
        promtool_check(bad)


# ---- gateway -------------------------------------------------------------------------------
def test_gateway_series_per_adapter_and_lengths() -> None:
    m = GatewayMetrics()
    m.started("alice", "alice/sql", 12)
    m.closed("alice", "alice/sql", "stop", 5, 0.25)
    m.started("bob", None, 3)
    m.closed("bob", None, "cancelled", 1, None)  # abandoned: no latency, no length
    m.bind_orphans(lambda: 7, lambda: 2, lambda: 4)
    m.bind_known_adapters(lambda: 3)
    text = m.render().decode()
    promtool_check(text)
    assert value(text, "loraplex_gateway_adapter_names_from_memory_total") == 3
    base = f'adapter="{BASE_ADAPTER}"'
    assert (
        value(text, 'loraplex_gateway_adapter_requests_total{adapter="alice/sql",tenant="alice"}')
        == 1
    )
    assert value(text, f'loraplex_gateway_adapter_requests_total{{{base},tenant="bob"}}') == 1
    key = 'loraplex_gateway_adapter_tokens_total{adapter="alice/sql",kind="completion",tenant="alice"}'
    assert value(text, key) == 5
    assert value(text, "loraplex_gateway_request_prompt_tokens_count") == 2
    assert value(text, "loraplex_gateway_request_prompt_tokens_sum") == 15
    assert value(text, "loraplex_gateway_request_generation_tokens_count") == 1
    assert value(text, "loraplex_gateway_request_generation_tokens_sum") == 5
    assert value(text, "loraplex_gateway_orphan_messages_total") == 7
    assert value(text, "loraplex_gateway_orphan_cancels_total") == 2
    assert value(text, "loraplex_gateway_unread_requests_failed_total") == 4
    assert value(text, "loraplex_gateway_requests_in_flight") == 0
    # the relayed worker and queue series are gone from the gateway (exported once elsewhere)
    assert "loraplex_worker_" not in text and "loraplex_queue_depth" not in text


def test_adapter_labels_are_bounded() -> None:
    m = GatewayMetrics(max_adapter_series=3)
    for i in range(10):
        m.started("alice", f"alice/a{i}", 1)
    text = m.render().decode()
    series = [
        ln for ln in text.splitlines() if ln.startswith("loraplex_gateway_adapter_requests_total{")
    ]
    assert len(series) == 4, series  # three adapters and "other"
    assert (
        value(text, 'loraplex_gateway_adapter_requests_total{adapter="other",tenant="alice"}') == 7
    )
    labels = BoundedLabels(2)
    assert [labels(v) for v in ("x", "y", "z", "x")] == ["x", "y", "other", "x"]


# ---- worker --------------------------------------------------------------------------------
def _fake_engine() -> types.SimpleNamespace:
    """The engine attributes a worker's scrape reads (real ones: tests/stack/test_observability)."""
    ns = types.SimpleNamespace
    return ns(
        allocator=ns(num_blocks=64, num_free=48),
        scheduler=ns(
            running=[ns(lora=None), ns(lora="a/x@1")],
            ready=[ns(lora=None)],
            waiting=[ns(lora="b/y@m2")],
            prefix_hit_tokens=32,
            prefix_query_tokens=80,
            preemptions=2,
        ),  # fmt: skip
        slots=ns(resident=lambda: ["a/x@1"], num_slots=8),
    )


def test_worker_series() -> None:
    m = WorkerMetrics("decode-0", "decode")
    assert "kv_blocks" not in generate_latest(m.registry).decode()  # nothing before the engine
    m.bind(_fake_engine())  # type: ignore[arg-type]
    m.step(0.02)
    m.page_in(0.3, "ok")
    m.page_in(0.1, "error")
    m.page_in(0.2, "disk")
    m.handover_sent(4096, 0.01)
    m.handover_failed()
    m.handover_received(100)
    text = generate_latest(m.registry).decode()
    promtool_check(text)
    ids = 'role="decode",worker="decode-0"'
    assert value(text, f"loraplex_worker_kv_blocks_used{{{ids}}}") == 16
    assert value(text, f"loraplex_worker_kv_blocks_capacity{{{ids}}}") == 64
    assert value(text, f"loraplex_worker_kv_usage_ratio{{{ids}}}") == 0.25
    assert value(text, f"loraplex_worker_requests_running{{{ids}}}") == 3
    assert value(text, f"loraplex_worker_requests_waiting{{{ids}}}") == 1
    assert value(text, f"loraplex_worker_adapter_slots_used{{{ids}}}") == 1
    assert value(text, f"loraplex_worker_adapter_slots_capacity{{{ids}}}") == 8
    assert value(text, f"loraplex_worker_prefix_cache_hit_tokens_total{{{ids}}}") == 32
    assert value(text, f"loraplex_worker_preemptions_total{{{ids}}}") == 2
    assert value(text, f"loraplex_worker_step_duration_seconds_count{{{ids}}}") == 1
    assert value(text, f'loraplex_worker_adapter_page_ins_total{{outcome="error",{ids}}}') == 1
    assert value(text, f'loraplex_worker_adapter_page_ins_total{{outcome="disk",{ids}}}') == 1
    assert value(text, f"loraplex_worker_adapter_page_in_seconds_count{{{ids}}}") == 2
    assert value(text, f'loraplex_worker_kv_handover_bytes_total{{direction="sent",{ids}}}') == 4096
    assert value(text, f'loraplex_worker_kv_handovers_total{{outcome="failed",{ids}}}') == 1


def test_acknowledged_messages_resent_and_undelivered() -> None:
    """How often NATS lost a request's last message or an assignment (or its answer), from the
    services' senders (``loraplex.acked``); present at 0 before a sender exists."""
    from loraplex.acked import AckedSender
    from loraplex.bus_memory import MemoryHub

    m = WorkerMetrics("w", "both")
    ids = 'role="both",worker="w"'
    text = generate_latest(m.registry).decode()
    assert value(text, f"loraplex_worker_last_messages_resent_total{{{ids}}}") == 0
    m.terminal = AckedSender(MemoryHub().connect("w"))
    m.terminal.retried, m.terminal.undelivered = 3, 1
    text = generate_latest(m.registry).decode()
    promtool_check(text)
    assert value(text, f"loraplex_worker_last_messages_resent_total{{{ids}}}") == 3
    assert value(text, f"loraplex_worker_last_messages_undelivered_total{{{ids}}}") == 1
    service = SchedulerService(SchedulerSettings(nats_url="nats://unused:1"), {"alice": 1.0})
    text = generate_latest(service.metrics.registry).decode()
    assert value(text, "loraplex_scheduler_last_messages_undelivered_total") == 0
    assert value(text, "loraplex_scheduler_assignments_resent_total") == 0
    service.outbox.connect(MemoryHub().connect("s"))  # type: ignore[arg-type]
    assert service.outbox.assignments is not None
    service.outbox.assignments.retried = 5
    text = generate_latest(service.metrics.registry).decode()
    promtool_check(text)
    assert value(text, "loraplex_scheduler_assignments_resent_total") == 5
    assert value(text, "loraplex_scheduler_assignments_undelivered_total") == 0


# ---- scheduler -----------------------------------------------------------------------------
def _hb(wid: str, role: str, total: int = 64) -> WorkerHeartbeat:
    return WorkerHeartbeat(wid, role, total, total, 16, 0, 0, 4)


def _submit(
    rid: str, tenant: str = "alice", prompt: int = 20, max_tokens: int = 20
) -> SubmitRequest:
    return SubmitRequest(
        rid, tenant, "gw", list(range(prompt)), SamplingParams(max_tokens=max_tokens)
    )


async def test_queue_depth_per_pool_names_the_pool_without_room() -> None:
    service = SchedulerService(SchedulerSettings(nats_url="nats://unused:1"), {"alice": 1.0})
    service.leading = True  # no replica election in this in-process test: it leads
    reg = service.registry
    reg.heartbeat(_hb("p0", "prefill"), 0.0)
    reg.heartbeat(_hb("d0", "decode", total=4), 0.0)  # 4 blocks: room for one 40-token request
    assert pool_counts(reg) == {"prefill": 1, "decode": 1, "both": 0}
    reg.commit("d0", "running", 40)  # the decode pool is now full
    assert blocked_pools(reg, _submit("x")) == {"decode", "both"}
    for i in range(3):
        assert service.submit(_submit(f"r{i}"), 0.0).accepted
    await service.dispatch(1.0)  # nothing can be placed: the head waits for decode room
    text = generate_latest(service.metrics.registry).decode()
    promtool_check(text)
    assert value(text, 'loraplex_scheduler_queue_depth{pool="decode"}') == 3
    assert value(text, 'loraplex_scheduler_queue_depth{pool="prefill"}') == 0
    assert value(text, 'loraplex_scheduler_queue_depth{pool="both"}') == 3
    assert value(text, 'loraplex_scheduler_tenant_queue_depth{tenant="alice"}') == 3
    assert value(text, 'loraplex_scheduler_pool_workers{pool="decode"}') == 1
    assert value(text, 'loraplex_scheduler_pool_requests{pool="decode"}') == 1
    assert value(text, 'loraplex_scheduler_pool_request_slots{pool="prefill"}') == 4
    stats = service.stats()
    assert stats.pools == {"prefill": 1, "decode": 1, "both": 0}


async def test_queue_time_and_submit_answers() -> None:
    service = SchedulerService(SchedulerSettings(nats_url="nats://unused:1"), {"alice": 1.0})
    service.listening_since = -10.0  # heard heartbeats longer than their timeout (fake clock)
    service.recovery.unservable_since = -10.0  # and no worker set for longer than the wait
    service.metrics.submitted(service.submit(_submit("r0"), 0.0))  # no workers yet: 503
    service.registry.heartbeat(_hb("c0", "both"), 0.0)
    q = types.SimpleNamespace(tenant="alice", arrival=1.0)
    service.metrics.admitted(q, 3.5)  # type: ignore[arg-type]
    service.metrics.submitted(service.submit(_submit("r1"), 0.0))
    text = generate_latest(service.metrics.registry).decode()
    promtool_check(text)
    assert value(text, 'loraplex_scheduler_submits_total{code="503"}') == 1
    assert value(text, 'loraplex_scheduler_submits_total{code="200"}') == 1
    assert value(text, 'loraplex_scheduler_queue_time_seconds_sum{tenant="alice"}') == 2.5
    assert value(text, 'loraplex_scheduler_queue_depth{pool="both"}') == 0  # nothing stalled


# ---- the gateway's readiness -------------------------------------------------------------
async def test_gateway_ready_only_with_a_serving_worker_set() -> None:
    now = [100.0]
    view = SchedulerView(fresh_s=3.0, clock=lambda: now[0])
    assert view.ready()[0] is False  # no scheduler heard yet
    await view.on_stats(SchedulerStats({}, {}, {}, {"prefill": 1, "decode": 0, "both": 0}))
    ready, detail = view.ready()
    assert not ready and detail["scheduler"] is True
    await view.on_stats(SchedulerStats({}, {}, {}, {"prefill": 1, "decode": 2, "both": 0}))
    assert view.ready()[0] is True
    now[0] += 2.0
    await view.on_stats(SchedulerStats({}, {}, {}, {"prefill": 0, "decode": 2, "both": 0}))
    assert view.ready()[0] is True  # the last capable broadcast is still fresh ...
    now[0] += 1.5
    assert view.ready()[0] is False  # ... until it is not
    now[0] += 10.0
    await view.on_stats(SchedulerStats({}, {}, {}, {"both": 1}))
    assert view.ready()[0] is True
    now[0] += 3.5  # the scheduler went silent
    assert view.ready() == (False, {"scheduler": False, "pools": {"both": 1}})
    assert can_serve({"both": 1}) and can_serve({"prefill": 1, "decode": 1})
    assert not can_serve({"prefill": 2}) and not can_serve({})


def test_a_real_preemption_reaches_the_worker_counter() -> None:
    """``Scheduler.preemptions`` (what the worker exports) counts each preempted sequence."""
    from tests.scheduler_helpers import make, run_step, seq

    sched = make(num_blocks=6, block_size=2, max_num_seqs=8)
    for i in range(6):
        sched.add(seq(f"s{i}", 2))
    run_step(sched)  # six prefilled, one block each: the pool is exhausted
    assert sched.preemptions == 0
    run_step(sched)  # each needs a second block: three are preempted
    assert sched.preemptions == 3
    engine = types.SimpleNamespace(
        allocator=sched.allocator,
        scheduler=sched,
        slots=types.SimpleNamespace(resident=lambda: [], num_slots=1),
    )
    m = WorkerMetrics("w", "both")
    m.bind(engine)  # type: ignore[arg-type]
    text = generate_latest(m.registry).decode()
    assert value(text, 'loraplex_worker_preemptions_total{role="both",worker="w"}') == 3
