"""One worker's Prometheus series, served by the worker itself (``http_status.py``), once.

State the engine already keeps (KV blocks, running and waiting requests, adapter slots, prefix-cache
and preemption totals) is read when Prometheus scrapes; events (a step, an adapter page-in, a K/V
hand-over) are observed where they happen.  Every series carries the worker's id and role as
labels, so a dashboard can match them with the scheduler's pools.  No tenant or adapter name is
exported in them.  The same state is also exported under vLLM's names (``vllm_metrics.py``), whose
``vllm:lora_requests_info`` names the adapters in use, as vLLM's does.

The engine's loop runs steps in a thread while a scrape reads these numbers on the event loop;
each is one int or ``len()`` read, so a scrape may see a step half-applied but never breaks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

from loraplex import prom
from loraplex.acked import AckedSender, sender_counters
from loraplex.terminal import LAST_MESSAGES
from loraplex.worker.vllm_metrics import VllmEngineSeries, served_model_name

if TYPE_CHECKING:
    from loraplex.engine.llm_engine import LLMEngine

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
_PAGE_IN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PAGE_IN_OUTCOMES = ("ok", "disk", "merged", "error")
_HANDOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, worker_id: str, role: str, model_name: str = "") -> None:
        self.worker_id, self.role = worker_id, role
        self.engine: LLMEngine | None = None  # bound once built (the listener starts before)
        # vLLM's model_name label; empty: found when the engine is bound (served_model_name)
        self.model_name = model_name
        self.terminal: AckedSender | None = None  # the publisher's, once it exists
        r = self.registry = CollectorRegistry()
        ids = {"worker": worker_id, "role": role}
        self._step = self._labelled_histogram(
            "loraplex_worker_step_duration_seconds",
            "one engine step (prefill, decode or mixed batch)",
            _STEP_BUCKETS,
            r,
            ids,
        )
        self._page_in_time = self._labelled_histogram(
            "loraplex_worker_adapter_page_in_seconds",
            "adapter page-in: fetch from the store and parse (then it waits for a device slot)",
            _PAGE_IN_BUCKETS,
            r,
            ids,
        )
        self._page_ins = Counter(
            "loraplex_worker_adapter_page_ins",
            "adapters paged in, by outcome: ok (from the store), disk (from the worker's disk "
            "copy while the store was unreachable), merged (built from its components), error",
            ["worker", "role", "outcome"],
            registry=r,
        )
        for outcome in PAGE_IN_OUTCOMES:
            self._page_ins.labels(worker_id, role, outcome)
        self._handover_time = self._labelled_histogram(
            "loraplex_worker_kv_handover_seconds",
            "prefill side of a K/V hand-over: reservation request to the last chunk flushed",
            _HANDOVER_BUCKETS,
            r,
            ids,
        )
        self._handover_bytes = Counter(
            "loraplex_worker_kv_handover_bytes",
            "K/V bytes handed over to decode workers (sent) or from prefill workers (received)",
            ["worker", "role", "direction"],
            registry=r,
        )
        self._handovers = Counter(
            "loraplex_worker_kv_handovers",
            "K/V hand-overs by outcome (ok; failed: refused, timed out or lost)",
            ["worker", "role", "outcome"],
            registry=r,
        )
        for direction in ("sent", "received"):
            self._handover_bytes.labels(worker_id, role, direction)
        for outcome in ("ok", "failed"):
            self._handovers.labels(worker_id, role, outcome)
        prom.register(r, self._collect)
        r.register(VllmEngineSeries(self))

    @staticmethod
    def _labelled_histogram(
        name: str,
        doc: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
        ids: dict[str, str],
    ) -> Histogram:
        h = Histogram(name, doc, list(ids), buckets=buckets, registry=registry)
        return h.labels(**ids)

    def bind(self, engine: LLMEngine) -> None:
        self.model_name = self.model_name or served_model_name(engine)
        self.engine = engine

    # ---- events ------------------------------------------------------------------------------
    def step(self, seconds: float) -> None:
        self._step.observe(seconds)

    def page_in(self, seconds: float, outcome: str) -> None:
        """``outcome``: one of ``PAGE_IN_OUTCOMES``; only loads that worked are timed."""
        self._page_ins.labels(self.worker_id, self.role, outcome).inc()
        if outcome != "error":
            self._page_in_time.observe(seconds)

    def handover_sent(self, nbytes: int, seconds: float) -> None:
        self._handover_bytes.labels(self.worker_id, self.role, "sent").inc(nbytes)
        self._handovers.labels(self.worker_id, self.role, "ok").inc()
        self._handover_time.observe(seconds)

    def handover_failed(self) -> None:
        self._handovers.labels(self.worker_id, self.role, "failed").inc()

    def handover_received(self, nbytes: int) -> None:
        self._handover_bytes.labels(self.worker_id, self.role, "received").inc(nbytes)

    # ---- state, read at scrape time ----------------------------------------------------------
    def _collect(self) -> Iterable[prom.Family]:
        key = (self.worker_id, self.role)
        labels = ["worker", "role"]
        yield from sender_counters(
            "loraplex_worker", "last_messages", LAST_MESSAGES, self.terminal, key, labels
        )
        e = self.engine
        if e is None:
            return
        used = e.allocator.num_blocks - e.allocator.num_free
        gauges = {
            "kv_blocks_used": ("KV-cache blocks in use", used),
            "kv_blocks_capacity": ("KV-cache blocks of this worker", e.allocator.num_blocks),
            "kv_usage_ratio": ("share of KV-cache blocks in use", used / e.allocator.num_blocks),
            "requests_running": (
                "requests in the batch (and prompt K/V received, about to join)",
                len(e.scheduler.running) + len(e.scheduler.ready),
            ),
            "requests_waiting": ("requests waiting inside the engine", len(e.scheduler.waiting)),
            "adapter_slots_used": (
                "device adapter slots holding an adapter",
                len(e.slots.resident()),
            ),
            "adapter_slots_capacity": ("device adapter slots", e.slots.num_slots),
        }
        for name, (doc, value) in gauges.items():
            yield prom.gauge(f"loraplex_worker_{name}", doc, {key: float(value)}, labels)
        counters = {
            "prefix_cache_hit_tokens": (
                "prompt tokens whose K/V came from the prefix cache",
                e.scheduler.prefix_hit_tokens,
            ),
            "prefix_cache_query_tokens": (
                "prompt tokens looked up in the prefix cache",
                e.scheduler.prefix_query_tokens,
            ),
            "preemptions": (
                "requests preempted (K/V freed, recomputed later) for lack of blocks",
                e.scheduler.preemptions,
            ),
        }
        for name, (doc, value) in counters.items():
            yield prom.counter(f"loraplex_worker_{name}", doc, {key: float(value)}, labels)
