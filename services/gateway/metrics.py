"""Prometheus metrics of one gateway (own CollectorRegistry, so several apps can coexist), served
on their own listener (``metrics_server.py``), not on the API port: they name tenants.

What the gateway itself observes: requests by route and status, time to first token, inter-token
latency, end-to-end latency, tokens per tenant, requests in flight, stray stream messages.
Queue depth, fairness counters, KV and adapter-slot gauges come from the scheduler's
``SchedulerStats`` broadcast (``loraplex.sched.stats``), so every gateway can show them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.protocol import SchedulerStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_ROUTES = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/adapters",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/tokenize",
    "/detokenize",
    "/health",
    "/ready",
)


def route_label(path: str) -> str:
    """A bounded label for a request path (no adapter names, no arbitrary 404 paths)."""
    if path in _ROUTES:
        return path
    for prefix in ("/v1/adapters/", "/v1/models/"):
        if path.startswith(prefix):
            return prefix + "{name}"
    return "other"


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplex_gateway_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "loraplex_gateway_time_to_first_token_seconds",
            "arrival to first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "loraplex_gateway_inter_token_latency_seconds",
            "time between generated tokens",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "loraplex_gateway_request_latency_seconds",
            "arrival to last token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "loraplex_gateway_tokens",
            "prompt and completion tokens",
            ["tenant", "kind"],
            registry=r,
        )
        self.finished = Counter(
            "loraplex_gateway_generations_finished",
            "generations by how they ended (stop, length, error, timeout, cancelled)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "loraplex_gateway_requests_in_flight", "generations waiting or streaming", registry=r
        )
        self.orphans = Gauge(
            "loraplex_gateway_orphan_messages",
            "stream messages for requests no longer open (dropped)",
            registry=r,
        )

        self.queue_depth = Gauge(
            "loraplex_queue_depth", "requests waiting in the scheduler", ["tenant"], registry=r
        )
        self.tenant_service = Gauge(
            "loraplex_tenant_service",
            "fairness counter (weighted tokens served)",
            ["tenant"],
            registry=r,
        )
        self.worker_gauges = {
            key: Gauge(
                f"loraplex_worker_{key}",
                f"per-worker {key.replace('_', ' ')}",
                ["worker"],
                registry=r,
            )
            for key in (
                "kv_blocks_used",
                "kv_blocks_total",
                "kv_blocks_committed",
                "running",
                "waiting",
                "adapter_slots_used",
                "adapter_slots_total",
                "prefix_cache_hit_tokens",
                "prefix_cache_query_tokens",
            )
        }

    async def on_scheduler_stats(self, stats: SchedulerStats) -> None:
        for tenant, n in stats.queued.items():
            self.queue_depth.labels(tenant).set(n)
        for tenant, c in stats.counters.items():
            self.tenant_service.labels(tenant).set(c)
        for gauge in self.worker_gauges.values():
            gauge.clear()  # workers that left disappear from the scrape
        for worker, values in stats.workers.items():
            for key, value in values.items():
                if key in self.worker_gauges:
                    self.worker_gauges[key].labels(worker).set(value)

    def bind_orphans(self, read: Callable[[], int]) -> None:
        self.orphans.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every HTTP answer by route and status (pure ASGI: streaming is not buffered)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route_label(scope["path"]), str(status)).inc()
