"""vLLM-named copies of a worker's engine series, for dashboards, alerts and autoscalers written
for vLLM (its Grafana dashboard, KEDA on ``vllm:num_requests_waiting``, the Gateway API Inference
Extension on ``vllm:kv_cache_usage_perc`` and ``vllm:lora_requests_info``).

Read from the same engine state as ``metrics.py``'s ``loraplex_worker_*`` series, at scrape time:
nothing is counted twice.  Names, types and labels are vLLM's (``model_name``, ``engine``; the LoRA
gauge has only its own three labels, as in vLLM).  Unlike ``loraplex_worker_*``, the LoRA gauge
names adapters: ``owner/name`` ids of the requests this worker runs or holds (the worker's listener
is internal; the ids name tenants, as the gateway's own listener does).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from loraplex import env

if TYPE_CHECKING:
    from loraplex.engine.llm_engine import LLMEngine

Family = CounterMetricFamily | GaugeMetricFamily
ENGINE = "0"  # vLLM's data-parallel engine index: a worker is one engine
FALLBACK_MODEL_NAME = "loraplex"


def served_model_name(engine: Any) -> str:
    """What the gateway would call the base model: ``LORAPLEX_MODEL_ID`` when set (the gateway's
    default for ``--model-id``), else the model directory's last component (the gateway's default
    without it).  A gateway started with another ``--model-id`` is not reachable from here."""
    named = env.MODEL_ID.get()
    if named:
        return named
    # The engine keeps its model directory only in its grammar helper (llm_engine.py).
    model_dir = getattr(getattr(engine, "grammars", None), "model_dir", None)
    return Path(model_dir).resolve().name if model_dir else FALLBACK_MODEL_NAME


def adapter_id(key: str) -> str:
    """The adapter id a client asked for: workers key slots ``name@version`` (adapter_pager)."""
    name, sep, _ = key.rpartition("@")
    return name if sep else key


def _adapters(seqs: Iterable[Any]) -> str:
    """vLLM's label value: the distinct adapter names, comma-joined (sorted: stable series)."""
    return ",".join(sorted({adapter_id(s.lora) for s in seqs if s.lora}))


def vllm_families(e: LLMEngine, model_name: str) -> Iterable[Family]:
    labels, values = ["model_name", "engine"], [model_name, ENGINE]
    sched = e.scheduler
    usage = (e.allocator.num_blocks - e.allocator.num_free) / e.allocator.num_blocks
    gauges = {
        "num_requests_running": (
            "Number of requests in model execution batches.",
            len(sched.running) + len(sched.ready),  # as loraplex_worker_requests_running
        ),
        "num_requests_waiting": ("Number of requests waiting to be processed.", len(sched.waiting)),
        "kv_cache_usage_perc": ("KV-cache usage. 1 means 100 percent usage.", usage),
        "gpu_cache_usage_perc": (
            "GPU KV-cache usage. 1 means 100 percent usage. "
            "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
            usage,
        ),
    }
    for name, (doc, value) in gauges.items():
        g = GaugeMetricFamily(f"vllm:{name}", doc, labels=labels)
        g.add_metric(values, float(value))
        yield g
    # CounterMetricFamily adds the _total suffix: vllm:num_preemptions_total etc., as vLLM.
    counters = {
        "num_preemptions": ("Cumulative number of preemption from the engine.", sched.preemptions),
        "prefix_cache_queries": (
            "Prefix cache queries, in terms of number of queried tokens.",
            sched.prefix_query_tokens,
        ),
        "prefix_cache_hits": (
            "Prefix cache hits, in terms of number of cached tokens.",
            sched.prefix_hit_tokens,
        ),
    }
    for name, (doc, value) in counters.items():
        c = CounterMetricFamily(f"vllm:{name}", doc, labels=labels)
        c.add_metric(values, float(value))
        yield c
    # vLLM sets this gauge to the time of its last update, one series per adapter combination;
    # a scrape here shows only the current combination (old ones do not pile up).
    lora = GaugeMetricFamily(
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
    )
    running = _adapters([*sched.running, *sched.ready])
    lora.add_metric([str(e.slots.num_slots), _adapters(sched.waiting), running], time.time())
    yield lora


class VllmEngineSeries:
    """A collector reading ``metrics.engine`` (bound once built) at every scrape."""

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics  # a WorkerMetrics (engine, model_name)

    def collect(self) -> Iterable[Family]:
        e = self._metrics.engine
        if e is None:
            return []
        return list(vllm_families(e, self._metrics.model_name))

    def describe(self) -> Iterable[Family]:
        return []  # absent before the engine exists: no fixed description
