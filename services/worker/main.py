"""Entry point shared by ``python -m loraplex.prefill`` and ``python -m loraplex.decode``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from loraplex import env
from loraplex.config import EngineConfig
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.warmup_run import warm_up
from loraplex.worker.adapter_pager import Fetch
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings, build_parser, settings_from_args

log = logging.getLogger("loraplex.worker")


def make_engine(s: WorkerSettings) -> LLMEngine:
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
    )
    engine = LLMEngine(s.model, config, dtype=s.dtype, device=s.device)
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


async def serve(s: WorkerSettings) -> None:
    engine = await asyncio.to_thread(make_engine, s)
    fetch, store = make_fetch(s.redis_url)
    worker = Worker(s, engine, fetch)
    await worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"loraplex {s.role} worker {s.worker_id} ready", flush=True)
    await stop.wait()
    log.info("draining worker %s", s.worker_id)
    await worker.drain_and_stop()
    if store is not None:
        await store.close()  # type: ignore[attr-defined]


def main(default_role: str, argv: list[str] | None = None) -> int:
    args = build_parser(default_role).parse_args(argv)
    env.configure_logging()
    asyncio.run(serve(settings_from_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main("both"))
