"""Entry point shared by ``python -m loraplex.prefill`` and ``python -m loraplex.decode``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import torch

from loraplex import env
from loraplex.config import EngineConfig
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.memory_budget import MemoryBudgetError
from loraplex.engine.warmup_run import warm_up
from loraplex.gc_heap import freeze_startup_heap
from loraplex.worker.adapter_pager import Fetch
from loraplex.worker.gpu_lease import DeviceConfigError, GpuLease, place_worker
from loraplex.worker.http_status import WorkerStatus, start_worker_status
from loraplex.worker.metrics import WorkerMetrics
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings, build_parser, settings_from_args

log = logging.getLogger("loraplex.worker")


def make_engine(s: WorkerSettings, device: str | None = None) -> LLMEngine:
    """The engine on ``device`` (placed by ``place``), else on ``s.device``."""
    config = EngineConfig(
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_model_len=s.max_model_len,
        block_size=s.block_size,
        num_kv_blocks=s.num_kv_blocks,
        max_loras=s.max_loras,
        max_lora_rank=s.max_lora_rank,
        enforce_eager=s.enforce_eager,
        max_cuda_graph_batch_size=s.max_cuda_graph_batch_size,
        enable_prefix_caching=s.enable_prefix_caching,
        kv_cache_memory_mb=env.KV_CACHE_MEMORY.get(),
        gpu_memory_utilization=s.gpu_memory_utilization,
    )
    engine = LLMEngine(s.model, config, dtype=s.dtype, device=device or s.device)
    # Compile every batch shape now (CUDA; LORAPLEX_WARMUP): never inside a serving step.
    warm_up(engine)
    return engine


def make_fetch(redis_url: str | None) -> tuple[Fetch | None, object]:
    if not redis_url:
        return None, None
    from loraplex.adapters.store import AdapterStore

    store = AdapterStore.from_url(redis_url)

    async def fetch(name: str) -> tuple[bytes, bytes, str]:
        got = await store.fetch(name)
        return got.config_bytes, got.weights_bytes, str(got.info.version)

    return fetch, store


def place(s: WorkerSettings) -> tuple[str | None, GpuLease | None]:
    """The engine's device; the lease (``--device auto``) lives as long as the process."""
    # device_count() creates no CUDA context: nothing lands on GPU 0 before the lease.
    return place_worker(
        s.device,
        torch.cuda.device_count(),
        s.gpu_lease_dir,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        holder=s.worker_id,
    )


async def serve(s: WorkerSettings) -> None:
    status = WorkerStatus(WorkerMetrics(s.worker_id, s.role))
    # Before the model loads: /health answers through a long load and warm-up, /ready says no.
    http = await start_worker_status(status, s.metrics_host, s.metrics_port)
    device, lease = place(s)
    engine = await asyncio.to_thread(make_engine, s, device)
    fetch, store = make_fetch(s.redis_url)
    worker = Worker(s, engine, fetch, status.metrics)
    await worker.start()
    status.attach(worker)
    # The model, torch and the warm-up's objects: out of every later full collection's walk (a
    # step stalls for as long as one takes).
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"loraplex {s.role} worker {s.worker_id} ready", flush=True)
    await stop.wait()
    log.info("draining worker %s", s.worker_id)
    await worker.drain_and_stop()
    if http is not None:
        await http.stop()
    if store is not None:
        await store.close()  # type: ignore[attr-defined]
    if lease is not None:
        lease.release()


def main(default_role: str, argv: list[str] | None = None) -> int:
    args = build_parser(default_role).parse_args(argv)
    env.configure_logging()
    try:
        asyncio.run(serve(settings_from_args(args)))
    except (DeviceConfigError, MemoryBudgetError) as e:
        # Bad --device / --gpu-memory-utilization: one line naming the flag, no traceback.
        print(f"loraplex {args.role} worker: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main("both"))
