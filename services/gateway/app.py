"""``create_app(settings)``: the gateway FastAPI app.

Built now (fail fast): tenants, tokenizer, metrics, and, with a Redis URL, the adapter
registration the adapter-store service also runs (``loraplex.adapters.registration``).  Per run
(lifespan): the NATS bus, the subscription to this gateway's stream subject
(``Subjects.stream(gateway_id)`` -> ``StreamRouter.dispatch``), and the registration's state
(Redis client, event publisher, registrar).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from loraplex import env, prom
from loraplex.adapters.registration.config import RegistrationConfig
from loraplex.adapters.registration.lifecycle import Registration
from loraplex.bus import Bus
from loraplex.gateway.auth_first import AuthFirstMiddleware
from loraplex.gateway.batches.execute import LineExecutor
from loraplex.gateway.batches.runner import BatchRunner
from loraplex.gateway.batches.store import BatchStore, MemoryBatchStore
from loraplex.gateway.batches.store_redis import RedisBatchStore
from loraplex.gateway.body_check import BodyCheckMiddleware
from loraplex.gateway.body_timeout import BodyTimeoutMiddleware
from loraplex.gateway.capacity import SchedulerView
from loraplex.gateway.errors import install_error_handlers
from loraplex.gateway.heartbeat import beating
from loraplex.gateway.limits import BodyLimitMiddleware
from loraplex.gateway.metrics import GatewayMetrics, RequestMetricsMiddleware
from loraplex.gateway.metrics_server import metrics_listener
from loraplex.gateway.response_events import EventLog, MemoryEventLog, RedisEventLog
from loraplex.gateway.response_store import MemoryResponseStore, ResponseStore, StoreLimits
from loraplex.gateway.response_store_redis import RedisResponseStore
from loraplex.gateway.responses_background import BackgroundResponses
from loraplex.gateway.responses_history import ResponseHistory
from loraplex.gateway.routes import (
    batches,
    completions,
    files,
    health,
    models,
    responses,
    tgi,
    tokenize,
    vllm_adapters,
)
from loraplex.gateway.routes.adapters import adapter_router
from loraplex.gateway.service import GatewayService
from loraplex.gateway.settings import GatewaySettings
from loraplex.gateway.streams import MIB, StreamRouter
from loraplex.gateway.upload_slots import FileUploadSlotsMiddleware
from loraplex.protocol import AdapterNameQuery, SchedulerStats, Subjects
from loraplex.tenants_watch import LiveTenants
from loraplex.terminal import serve_stream
from loraplex.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def _registration(settings: GatewaySettings, tenants: LiveTenants) -> Registration | None:
    """The adapter routes' registration (the adapter-store's, run in this process), checked
    now; None without a Redis URL.  Flags the gateway lacks come from ``LORAPLEX_*``."""
    if not settings.redis_url:
        return None
    return Registration.prepare(
        RegistrationConfig.from_env(
            model_dir=settings.model_dir,
            redis_url=settings.redis_url,
            nats_url=settings.nats_url,
            tenants_file=settings.tenants_file,
            redis_prefix=settings.redis_prefix,
            max_adapter_mb=settings.max_adapter_mb,
            max_lora_rank=settings.max_lora_rank,
            adapters_root=settings.adapters_root,
        ),
        tenants,  # the gateway's own, read from the same file
    )


def _response_store(
    settings: GatewaySettings, redis: object | None
) -> tuple[ResponseStore | None, EventLog | None]:
    """Where Responses API answers (and streamed background ones' events) are kept: the adapter
    store's Redis (shared by every gateway replica) when there is one, else this process's
    memory; None with a TTL of 0."""
    if settings.responses_ttl_s == 0:
        return None, None
    limits = StoreLimits(
        ttl_s=settings.responses_ttl_s,
        max_bytes=settings.responses_max_kb * 1024,
        per_tenant=settings.responses_per_tenant,
        tenant_bytes=int(settings.responses_tenant_mb * 1024 * 1024),
    )
    if redis is None:
        return MemoryResponseStore(limits), MemoryEventLog(limits)
    prefix = settings.redis_prefix
    return (
        RedisResponseStore(redis, limits, prefix),  # type: ignore[arg-type]
        RedisEventLog(redis, limits, prefix),  # type: ignore[arg-type]
    )


def _batch_runner(
    settings: GatewaySettings,
    redis: object | None,
    service: GatewayService,
    history: ResponseHistory,
) -> BatchRunner:
    """The Batch API's runner over the shared Redis (any replica answers for a batch and takes
    over a dead one's) or, without Redis, this process's memory."""
    limits = settings.batches
    store: BatchStore = (
        MemoryBatchStore(limits)
        if redis is None
        else RedisBatchStore(redis, limits, settings.redis_prefix)  # type: ignore[arg-type]
    )
    return BatchRunner(store, LineExecutor(service, history), settings.gateway_id)


def create_app(settings: GatewaySettings) -> FastAPI:
    tenants = LiveTenants(settings.tenants_file)  # re-read when the file changes
    tokenizer = Tokenizer(settings.model_dir)
    metrics = GatewayMetrics(model_name=settings.model_id)
    streams = StreamRouter(int(settings.stream_buffer_mb * MIB))
    capacity = SchedulerView()
    metrics.bind_orphans(
        lambda: streams.orphans, lambda: streams.orphan_cancels, lambda: streams.unread_failed
    )
    registration = _registration(settings, tenants)
    prom.register(metrics.registry, tenants.metric_families)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.metrics_port:
                await stack.enter_async_context(
                    metrics_listener(metrics, settings.metrics_host, settings.metrics_port)
                )
            await stack.enter_async_context(tenants.watching())
            bus = await Bus.connect(settings.nats_url, name=f"gateway-{settings.gateway_id}")
            stack.push_async_callback(bus.close)
            # A request's last message comes as a request: acknowledged (loraplex.terminal).
            await serve_stream(bus, settings.gateway_id, streams.dispatch)
            # The scheduler's broadcast says whether any worker set can serve: /ready.
            await bus.subscribe(Subjects.STATS, capacity.on_stats, SchedulerStats)
            # So the scheduler knows this gateway lives (it cancels a gone one's requests).
            await stack.enter_async_context(beating(bus, settings.gateway_id))
            store = None
            if registration is not None:
                state = await stack.enter_async_context(registration.running())
                app.state.loraplex = state  # read by the adapter routes
                store = state.store
                log.info(
                    "adapter-store ready on %s:%d (in the gateway)", settings.host, settings.port
                )
            redis = store.redis if store is not None else None
            response_store, event_log = _response_store(settings, redis)
            app.state.responses = ResponseHistory(
                response_store, lambda o: metrics.responses_kept.labels(o).inc()
            )
            app.state.background = BackgroundResponses(
                app.state.responses,
                bus,
                settings.gateway_id,
                event_log,
                idle_s=settings.request_timeout_s + 10,  # past the generating gateway's own limit
            )
            stack.push_async_callback(app.state.background.stop)
            app.state.service = service = GatewayService(
                settings, bus, streams, tokenizer, store, metrics
            )
            metrics.bind_known_adapters(lambda: service.known_adapters.served_stale)
            app.state.batches = _batch_runner(settings, redis, service, app.state.responses)
            app.state.batches.start()
            metrics.bind_batches(app.state.batches.stats)
            stack.push_async_callback(app.state.batches.stop)
            # A delta for a request no longer open (its cancel was lost: ask again), or one
            # failed for its tenant's unread backlog.
            streams.bind_cancel(service.cancel)
            # Another gateway started during a Redis outage may ask what a name meant.
            await bus.serve(Subjects.ADAPTER_NAMES, service.answer_peer, AdapterNameQuery)
            # From the start, so the leader is known before the first request.
            await service.resubmitter.ensure_subscribed()
            mode = "open mode" if tenants.open_mode else f"{len(tenants.current.tenants)} tenants"
            log.info(
                "gateway %s serving %r (%s, adapters %s)",
                settings.gateway_id,
                settings.model_id,
                mode,
                "on" if store is not None else "off",
            )
            yield

    app = FastAPI(title="loraplex gateway", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.tenants = tenants
    app.state.metrics = metrics
    app.state.streams = streams
    app.state.capacity = capacity
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(models.router)
    app.include_router(adapter_router(registration is not None))
    app.include_router(vllm_adapters.router)
    app.include_router(tokenize.router)
    app.include_router(tgi.router)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    # inside the body limit: reads bodies the limit already bounded
    app.add_middleware(BodyCheckMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        # an upload to /v1/files: its file, and the multipart form around it
        by_prefix={"/v1/files": settings.batches.file_max_bytes + 64 * 1024},
    )
    # outside the body limit: a 401 or 429 before any of an upload is read
    app.add_middleware(
        FileUploadSlotsMiddleware, per_tenant=env.GATEWAY_FILE_UPLOADS_PER_TENANT.get()
    )
    # outside both: a request with a body and no valid key is a 401 before any of it is read
    app.add_middleware(AuthFirstMiddleware)
    # outermost but metrics: every route's body reading is bounded in time (408)
    app.add_middleware(
        BodyTimeoutMiddleware,
        timeout_s=env.GATEWAY_BODY_TIMEOUT_S.get(),
        min_rate=env.GATEWAY_BODY_MIN_RATE.get(),
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
