"""Part 2: hit rates and tokens/s of one worker serving a catalogue under Zipf popularity."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loraplex.adapters.keys import adapter_id
from loraplex.adapters.store import AdapterStore
from loraplex.bus import Bus
from loraplex.lora.host_cache import HostAdapterCache
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.model.config import ModelConfig
from loraplex.tooling.demo import write_demo_model
from loraplex.worker.main import make_engine, make_fetch
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings

from .client import Client
from .config import MB, OWNER, Fetch
from .options import Args
from .peft import peft_adapter, register_all, write_peft


@dataclass
class ZipfRow:
    system: str
    alpha: float
    requests: int
    distinct: int
    host_hit: float
    slot_hit: float
    fetches: int
    fetched_mb: float
    tok_s: float
    p50_s: float
    p95_s: float
    errors: int
    retries: int
    wall_s: float


def zipf_draws(rng: np.random.Generator, n: int, catalog: int, alpha: float) -> list[int]:
    weights = np.arange(1, catalog + 1, dtype=np.float64) ** -alpha
    ranks = rng.choice(catalog, size=n, p=weights / weights.sum())
    perm = np.random.default_rng(12345).permutation(catalog)  # popularity independent of names
    return [int(perm[r]) for r in ranks]


def disk_fetch(root: Path) -> Fetch:
    def read(aid: str) -> tuple[bytes, bytes, str]:
        d = root / (aid.partition("/")[2] or aid)  # the files are named without the owner
        return (d / CONFIG_FILE).read_bytes(), (d / WEIGHTS_FILE).read_bytes(), "disk"

    async def fetch(name: str) -> tuple[bytes, bytes, str]:
        return await asyncio.to_thread(read, name)

    return fetch


async def zipf_run(
    args: Args,
    system: str,
    alpha: float,
    model_dir: Path,
    names: list[str],
    disk_root: Path,
    nats_url: str,
    redis_url: str,
) -> ZipfRow:
    settings = WorkerSettings(
        role="both",
        model=str(model_dir),
        nats_url=nats_url,
        redis_url=redis_url,
        worker_id=f"bench-{system}-{uuid.uuid4().hex[:6]}",
        dtype="float32",
        device="cpu",
        max_num_seqs=args.concurrency,
        max_num_batched_tokens=max(1024, args.concurrency * args.prompt_len),
        max_model_len=max(64, args.prompt_len + args.output_len + 1),
        block_size=16,
        num_kv_blocks=args.concurrency * 4 + 64,
        max_loras=args.slots,
        max_lora_rank=max(8, args.adapter_rank),
        host_cache_mb=max(1, args.host_cache_mb),
        heartbeat_interval_s=1.0,
    )
    engine = await asyncio.to_thread(make_engine, settings)
    store = None
    if system == "loraplex":
        redis_fetch, store = make_fetch(redis_url)  # the worker's own fetch (default key prefix)
        assert redis_fetch is not None
        base_fetch: Fetch = redis_fetch
    else:
        base_fetch = disk_fetch(disk_root)
    counters = {"fetches": 0, "fetched_bytes": 0, "slot_loads": 0}

    async def counting_fetch(name: str) -> tuple[bytes, bytes, str]:
        got = await base_fetch(name)
        counters["fetches"] += 1
        counters["fetched_bytes"] += len(got[0]) + len(got[1])
        return got

    worker = Worker(settings, engine, counting_fetch)
    if system == "disk":
        worker.pager.cache = HostAdapterCache(1)  # no host tier: gone as soon as unused
    load = engine.lora_weights.load

    def counting_load(slot, adapter):  # type: ignore[no-untyped-def]
        counters["slot_loads"] += 1
        load(slot, adapter)

    engine.lora_weights.load = counting_load  # type: ignore[method-assign]
    await worker.start()
    assert worker.bus is not None
    await worker.bus.flush()  # see Client.start
    bus = await Bus.connect(nats_url, f"bench-client-{system}")
    client = Client(bus)
    await client.start()
    rng = np.random.default_rng(args.seed + int(alpha * 1000))
    vocab = engine.model_config.vocab_size

    def workload(n: int) -> list[tuple[list[int], str]]:
        picks = zipf_draws(rng, n, len(names), alpha)
        return [(rng.integers(4, vocab, size=args.prompt_len).tolist(), names[i]) for i in picks]

    retries = 0

    async def drive(reqs: list[tuple[list[int], str]]) -> tuple[list[float], int, int]:
        nonlocal retries
        sem = asyncio.Semaphore(args.concurrency)
        lat: list[float] = []
        tokens = 0
        failed = 0

        async def one(prompt: list[int], adapter: str) -> None:
            nonlocal tokens, failed, retries
            async with sem:
                t0 = time.perf_counter()
                for attempt in range(4):
                    rid = await client.run(worker.id, prompt, adapter, args.output_len)
                    if rid not in client.errors:
                        break
                    if attempt < 3:
                        retries += 1
                else:
                    failed += 1
                    return
                lat.append(time.perf_counter() - t0)
                tokens += client.tokens[rid]

        await asyncio.gather(*(one(p, a) for p, a in reqs))
        return lat, tokens, failed

    try:
        if args.warmup:
            await drive(workload(args.warmup))
        for k in counters:
            counters[k] = 0
        retries = 0
        reqs = workload(args.requests)
        t0 = time.perf_counter()
        lat, tokens, failed = await drive(reqs)
        wall = time.perf_counter() - t0
    finally:
        await worker.stop()
        await bus.close()
        if store is not None:
            await store.close()  # type: ignore[attr-defined]
    n = len(reqs)
    lat.sort()
    return ZipfRow(
        system=system,
        alpha=alpha,
        requests=n,
        distinct=len({a for _, a in reqs}),
        host_hit=1.0 - counters["fetches"] / n,
        slot_hit=1.0 - counters["slot_loads"] / n,
        fetches=counters["fetches"],
        fetched_mb=counters["fetched_bytes"] / MB,
        tok_s=tokens / wall,
        p50_s=lat[len(lat) // 2] if lat else float("nan"),
        p95_s=lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else float("nan"),
        errors=failed,
        retries=retries,
        wall_s=wall,
    )


async def zipf(args: Args, nats_url: str, redis_url: str, root: Path) -> list[ZipfRow]:
    demo = write_demo_model(root / "demo-model", num_adapters=0)
    model = ModelConfig.from_dir(demo.model_dir)
    disk_root = root / "catalog"
    store = AdapterStore.from_url(redis_url)  # default prefix: what workers read
    t = time.perf_counter()
    names, items = [], []
    for i in range(args.catalog):
        name = f"zipf-{i:04d}"
        config, weights = peft_adapter(model, args.adapter_rank, seed=10_000 + i)
        write_peft(disk_root / name, config, weights)
        names.append(adapter_id(OWNER, name))  # what a SUBMIT names: the owner's id
        items.append((name, config, weights, args.adapter_rank))
    await register_all(store, items)
    size = len(items[0][2])
    del items
    await store.close()
    print(
        f"  {args.catalog} adapters ({size / 1024:.0f} KiB each) written and registered in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    rows = []
    for alpha in args.alphas:
        for system in ("loraplex", "disk"):
            row = await zipf_run(
                args, system, alpha, demo.model_dir, names, disk_root, nats_url, redis_url
            )
            rows.append(row)
            print(
                f"  alpha {alpha} {system:8s}: host hit {row.host_hit:.1%} slot hit {row.slot_hit:.1%} "
                f"fetches {row.fetches} tok/s {row.tok_s:.0f} p50 {row.p50_s * 1000:.0f}ms "
                f"p95 {row.p95_s * 1000:.0f}ms errors {row.errors} retries {row.retries} ({row.wall_s:.1f}s)",
                flush=True,
            )
    return rows
