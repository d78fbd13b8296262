"""Adapter paging: cold-load latency of Llama-2-7B-sized adapters, and hit rates / tokens/s of a
worker serving 1000 adapters under Zipf popularity.

    python bench/adapters.py [--ranks 8,16,64] [--repeats 5]
                             [--catalog 1000] [--requests 600] [--warmup 200] [--alphas 1.0,1.5]
                             [--slots 16] [--host-cache-mb 64] [--concurrency 32]
                             [--prompt-len 16] [--output-len 8] [--skip-cold] [--skip-zipf]
                             [--write-docs]

Part 1, cold load (``--ranks``): one PEFT adapter per rank with every target (q, k, v, o, gate,
up, down) at Llama-2-7B shapes (hidden 4096, intermediate 11008, 32 layers), random fp16 tensors
in ``adapter_model.safetensors``.  It is registered in a redis-server started by the bench (no
persistence), and each repeat times the path a worker takes on a miss:

* fetch + sha256: ``AdapterStore.fetch`` (chunked HMGETs, then the sha256 check; sha256 alone is
  also timed on the same bytes);
* parse: ``parse_adapter`` against a ``ModelConfig`` built from the Llama-2-7B config dict (A/B
  shapes and ranks validated, B pre-scaled, converted to fp32, NaN/inf check);
* copy: ``LoraWeights.load`` into slot 0 of an fp16 ``LoraWeights(max_loras=1,
  max_rank=rank)``, i.e. exactly one slot's worth of stacked storage.

The same adapter is also loaded from local files (read both files + the same parse and copy),
from the page cache and after ``posix_fadvise(DONTNEED)`` (best effort: cold if the kernel and
file system honour it).  Each cell is the median of ``--repeats`` runs.

Part 2, Zipf (``--catalog`` adapters, rank 8, every target, on the demo model's shapes, fp16
files): an in-process ``Worker`` (role both, CPU, ``--slots`` device slots) is fed over NATS
exactly as the scheduler would (``PrefillAssign`` on its subject, ``TokenDelta`` back on a
stream subject), closed loop with ``--concurrency`` requests in flight; each request draws its
adapter from a Zipf(alpha) popularity over the catalogue, a random ``--prompt-len``-token prompt,
and decodes ``--output-len`` tokens greedily.  ``--warmup`` requests from the same distribution
run first (not measured).  Two systems:

* loraplex: Redis fetch -> host LRU (``--host-cache-mb``) -> device slots (the worker as shipped);
* disk on every miss: the same engine and pager, but the fetch reads the PEFT files from a local
  directory and there is no host tier (a 1-byte budget: an adapter leaves host memory, and with it
  its device slot, as soon as no request uses it).

host hit = requests that needed no fetch (adapter resident, or already being fetched for another
request); slot hit = requests admitted without copying weights into a device slot; tokens/s =
generated tokens / wall time of the measured requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, num_cores, replace_doc_section, today  # noqa: E402

from loraplex.adapters.store import AdapterStore  # noqa: E402
from loraplex.bus import Bus  # noqa: E402
from loraplex.demo import write_demo_model  # noqa: E402
from loraplex.lora.adapter import LORA_TARGETS, parse_adapter  # noqa: E402
from loraplex.lora.host_cache import HostAdapterCache  # noqa: E402
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from loraplex.lora.weights import LoraWeights  # noqa: E402
from loraplex.model.config import ModelConfig  # noqa: E402
from loraplex.protocol import (  # noqa: E402
    CancelRequest,
    PrefillAssign,
    RequestError,
    SamplingSpec,
    Subjects,
    SubmitRequest,
    TokenDelta,
)
from loraplex.servers import start_nats, start_redis  # noqa: E402
from loraplex.worker.main import make_engine, make_fetch  # noqa: E402
from loraplex.worker.runtime import Worker  # noqa: E402
from loraplex.worker.settings import WorkerSettings  # noqa: E402

SECTION = "Adapter paging (bench/adapters.py)"
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}
MLP = ("gate_proj", "up_proj", "down_proj")
OWNER = "bench"
MB = 2**20

Fetch = Callable[[str], Awaitable[tuple[bytes, bytes, str]]]


@dataclass(frozen=True)
class Args:
    ranks: list[int]
    repeats: int
    catalog: int
    requests: int
    warmup: int
    alphas: list[float]
    slots: int
    host_cache_mb: int
    concurrency: int
    prompt_len: int
    output_len: int
    adapter_rank: int
    skip_cold: bool
    skip_zipf: bool
    write_docs: bool
    seed: int


def parse_args(argv: Sequence[str] | None = None) -> Args:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ranks", default="8,16,64", help="cold-load: comma-separated adapter ranks")
    p.add_argument("--repeats", type=int, default=5, help="cold-load: runs per cell (median)")
    p.add_argument("--catalog", type=int, default=1000, help="zipf: registered adapters")
    p.add_argument("--requests", type=int, default=600, help="zipf: measured requests per run")
    p.add_argument("--warmup", type=int, default=200, help="zipf: unmeasured requests first")
    p.add_argument("--alphas", default="1.0,1.5", help="zipf: comma-separated exponents")
    p.add_argument("--slots", type=int, default=16, help="zipf: device adapter slots (max_loras)")
    p.add_argument("--host-cache-mb", type=int, default=64, help="zipf: loraplex host-cache budget")
    p.add_argument("--concurrency", type=int, default=32, help="zipf: requests in flight")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=8)
    p.add_argument("--adapter-rank", type=int, default=8, help="zipf: rank of the catalogue")
    p.add_argument("--skip-cold", action="store_true", help="skip part 1")
    p.add_argument("--skip-zipf", action="store_true", help="skip part 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--write-docs", action="store_true", help=f"replace '## {SECTION}' in docs/benchmarks.md"
    )
    ns = p.parse_args(argv)
    return Args(
        ranks=[int(x) for x in ns.ranks.split(",") if x],
        repeats=ns.repeats,
        catalog=ns.catalog,
        requests=ns.requests,
        warmup=ns.warmup,
        alphas=[float(x) for x in ns.alphas.split(",") if x],
        slots=ns.slots,
        host_cache_mb=ns.host_cache_mb,
        concurrency=ns.concurrency,
        prompt_len=ns.prompt_len,
        output_len=ns.output_len,
        adapter_rank=ns.adapter_rank,
        skip_cold=ns.skip_cold,
        skip_zipf=ns.skip_zipf,
        write_docs=ns.write_docs,
        seed=ns.seed,
    )


# ---- PEFT adapters -----------------------------------------------------------------------
def peft_adapter(
    model: ModelConfig, rank: int, seed: int, dtype: torch.dtype = torch.float16
) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) of a random all-target LoRA adapter."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(model.num_layers):
        for t in LORA_TARGETS:
            in_f, out_f = model.module_shape(t)
            key = f"base_model.model.model.layers.{layer}.{'mlp' if t in MLP else 'self_attn'}.{t}"
            tensors[f"{key}.lora_A.weight"] = (
                torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)
            ).to(dtype)
            tensors[f"{key}.lora_B.weight"] = (
                torch.randn(out_f, rank, generator=gen) * 0.5 / rank
            ).to(dtype)
    weights = save_safetensors(tensors, metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(LORA_TARGETS),
        "use_rslora": False,
        "use_dora": False,
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
    }
    return json.dumps(config).encode(), weights


def write_peft(path: Path, config: bytes, weights: bytes) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_bytes(config)
    with open(path / WEIGHTS_FILE, "wb") as f:
        f.write(weights)
        f.flush()
        os.fsync(f.fileno())


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (best effort; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def register_all(
    store: AdapterStore, items: Sequence[tuple[str, bytes, bytes, int]], parallel: int = 16
) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(name: str, config: bytes, weights: bytes, rank: int) -> None:
        async with sem:
            await store.register(
                name, OWNER, config, weights, rank=rank, alpha=2.0 * rank, targets=LORA_TARGETS
            )

    await asyncio.gather(*(one(*it) for it in items))


# ---- part 1: cold load -------------------------------------------------------------------
@dataclass
class ColdRow:
    rank: int
    file_mb: float
    host_mb: float
    slot_mb: float
    redis: dict[str, float]  # stage -> median seconds
    redis_best: float  # fastest Redis -> slot total
    disk_warm: dict[str, float]
    disk_cold: dict[str, float]


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def cold_load(args: Args, redis_url: str, root: Path) -> list[ColdRow]:
    model = ModelConfig.from_hf_dict(LLAMA2_7B)
    store = AdapterStore.from_url(redis_url, prefix=f"bench-{uuid.uuid4().hex[:6]}")
    rows = []
    try:
        for rank in args.ranks:
            name = f"llama2-7b-r{rank}"
            t = time.perf_counter()
            config, weights = peft_adapter(model, rank, seed=rank)
            path = root / name
            write_peft(path, config, weights)
            await store.register(
                name, OWNER, config, weights, rank=rank, alpha=2.0 * rank, targets=LORA_TARGETS
            )
            print(
                f"  rank {rank}: {len(weights) / MB:.0f} MiB adapter generated and registered in {time.perf_counter() - t:.1f}s",
                flush=True,
            )
            del weights
            slots = LoraWeights(
                model, max_loras=1, max_rank=rank, dtype=torch.float16, device=torch.device("cpu")
            )
            redis_runs, warm_runs, cold_runs = [], [], []
            host_bytes = 0
            for _ in range(args.repeats):
                # Redis (+ the store's sha256 check) -> parse -> slot
                t0 = time.perf_counter()
                got = await store.fetch(name)
                t1 = time.perf_counter()
                adapter = await asyncio.to_thread(
                    parse_adapter, name, got.config_bytes, got.weights_bytes, model, rank
                )
                t2 = time.perf_counter()
                slots.load(0, adapter)
                t3 = time.perf_counter()
                hashlib.sha256(got.weights_bytes).hexdigest()  # the sha256 share of the fetch
                t_sha = time.perf_counter() - t3
                host_bytes = adapter.nbytes
                redis_runs.append(
                    {
                        "fetch": t1 - t0,
                        "sha": t_sha,
                        "parse": t2 - t1,
                        "copy": t3 - t2,
                        "total": t3 - t0,
                    }
                )
                del got, adapter
                for runs, cold in ((warm_runs, False), (cold_runs, True)):
                    if cold:
                        drop_page_cache(path / WEIGHTS_FILE)
                    t0 = time.perf_counter()
                    cfg_b, w_b = (
                        (path / CONFIG_FILE).read_bytes(),
                        (path / WEIGHTS_FILE).read_bytes(),
                    )
                    t1 = time.perf_counter()
                    adapter = parse_adapter(name, cfg_b, w_b, model, rank)
                    t2 = time.perf_counter()
                    slots.load(0, adapter)
                    t3 = time.perf_counter()
                    runs.append(
                        {"read": t1 - t0, "parse": t2 - t1, "copy": t3 - t2, "total": t3 - t0}
                    )
                    del cfg_b, w_b, adapter
            row = ColdRow(
                rank,
                file_mb=(path / WEIGHTS_FILE).stat().st_size / MB,
                host_mb=host_bytes / MB,
                slot_mb=slots.nbytes / MB,
                redis=_median(redis_runs),
                redis_best=min(r["total"] for r in redis_runs),
                disk_warm=_median(warm_runs),
                disk_cold=_median(cold_runs),
            )
            rows.append(row)
            r = row.redis
            print(
                f"  rank {rank}: redis fetch+sha {r['fetch']:.3f}s (sha {r['sha']:.3f}s) parse {r['parse']:.3f}s "
                f"copy {r['copy']:.3f}s total {r['total']:.3f}s | disk warm {row.disk_warm['total']:.3f}s "
                f"cold {row.disk_cold['total']:.3f}s",
                flush=True,
            )
            del slots
            await store.delete_for(OWNER, name)
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
    finally:
        await store.close()
    return rows


# ---- part 2: zipf ------------------------------------------------------------------------
@dataclass
class Client:
    """What a gateway does for these requests: submit over NATS, collect the stream."""

    bus: Bus
    id: str = field(default_factory=lambda: f"bench-gw-{uuid.uuid4().hex[:6]}")
    done: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, RequestError] = field(default_factory=dict)

    async def start(self) -> None:
        await self.bus.subscribe(Subjects.stream(self.id), self._on_msg, (TokenDelta, RequestError))
        # nats-py writes flush()'s PING ahead of a SUB still queued: a second PING follows the SUB
        await self.bus.flush()
        await self.bus.flush()

    async def _on_msg(self, msg: TokenDelta | RequestError) -> None:
        if isinstance(msg, RequestError):
            self.errors[msg.request_id] = msg
            self.done[msg.request_id].set()
            return
        self.tokens[msg.request_id] += len(msg.token_ids)
        if msg.finish_reason is not None:
            self.done[msg.request_id].set()

    async def run(self, worker_id: str, prompt: list[int], adapter: str, max_tokens: int) -> str:
        rid = f"b-{uuid.uuid4().hex[:12]}"
        sampling = SamplingSpec(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        sub = SubmitRequest(rid, OWNER, self.id, prompt, sampling, adapter, arrival_ts=time.time())
        done = self.done[rid]
        await self.bus.publish(Subjects.worker(worker_id), PrefillAssign(sub))
        try:
            await asyncio.wait_for(done.wait(), 120.0)
        except asyncio.TimeoutError:
            await self.bus.publish(Subjects.worker(worker_id), CancelRequest(rid))
            self.errors[rid] = RequestError(rid, 504, "no answer within 120 s")
        return rid


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
    def read(name: str) -> tuple[bytes, bytes, str]:
        d = root / name
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
        names.append(name)
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


# ---- report ------------------------------------------------------------------------------
def ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x >= 0.1 else f"{x * 1000:.1f}"


def cold_tables(rows: list[ColdRow]) -> tuple[str, str]:
    redis = markdown_table(
        [
            "rank",
            "file (MiB)",
            "Redis fetch + sha256 (ms)",
            "of which sha256 (ms)",
            "parse (ms)",
            "copy to slot (ms)",
            "total, p50 (ms)",
            "total, best (ms)",
        ],
        [
            [
                str(r.rank),
                f"{r.file_mb:.0f}",
                ms(r.redis["fetch"]),
                ms(r.redis["sha"]),
                ms(r.redis["parse"]),
                ms(r.redis["copy"]),
                ms(r.redis["total"]),
                ms(r.redis_best),
            ]
            for r in rows
        ],
    )
    disk = markdown_table(
        [
            "rank",
            "read, page cache (ms)",
            "total, page cache (ms)",
            "read, cache dropped (ms)",
            "total, cache dropped (ms)",
            "Redis total / disk total (page cache)",
        ],
        [
            [
                str(r.rank),
                ms(r.disk_warm["read"]),
                ms(r.disk_warm["total"]),
                ms(r.disk_cold["read"]),
                ms(r.disk_cold["total"]),
                f"{r.redis['total'] / r.disk_warm['total']:.1f}x",
            ]
            for r in rows
        ],
    )
    return redis, disk


def zipf_table(rows: list[ZipfRow]) -> str:
    headers = [
        "alpha",
        "system",
        "distinct adapters",
        "host hit",
        "slot hit",
        "fetches",
        "fetched (MiB)",
        "tokens/s",
        "p50 latency (ms)",
        "p95 latency (ms)",
        "retried / failed",
    ]
    body = []
    for r in rows:
        body.append(
            [
                f"{r.alpha:g}",
                "loraplex (Redis + host LRU + slots)"
                if r.system == "loraplex"
                else "disk on every miss",
                str(r.distinct),
                f"{r.host_hit:.1%}",
                f"{r.slot_hit:.1%}",
                str(r.fetches),
                f"{r.fetched_mb:.1f}",
                f"{r.tok_s:.0f}",
                f"{r.p50_s * 1000:.0f}",
                f"{r.p95_s * 1000:.0f}",
                f"{r.retries} / {r.errors}",
            ]
        )
    return markdown_table(headers, body)


def docs_body(
    args: Args,
    argv: Sequence[str],
    cold: list[ColdRow],
    zrows: list[ZipfRow],
    seconds: float,
    load: tuple[float, float],
) -> str:
    cmd = " ".join(["python", "bench/adapters.py", *argv])
    parts = [
        f"Command: `{cmd}` ({today()}; {seconds:.0f} s in all).",
        "",
        f'Machine: {machine_line()}.  No GPU: the engine runs on the CPU, so the "device" slot copy '
        "is a host-to-host copy here (on a GPU it is a pinned-host-to-HBM transfer), and Redis runs on "
        "the same machine (loopback, no network).  Other jobs shared the machine (1-minute load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on {num_cores()} cores), so "
        "absolute numbers are noisy: compare within a table, not across runs.",
    ]
    if cold:
        parts += [
            "",
            "### Cold load of Llama-2-7B-sized adapters",
            "",
            f"One PEFT adapter per rank targeting q, k, v, o, gate, up and down in all 32 layers "
            f"(hidden 4096, intermediate 11008), random fp16 tensors; median of {args.repeats} runs.  "
            "Redis -> device slot, the path a worker takes on a miss.  *Redis fetch + sha256*: "
            "`AdapterStore.fetch` (sequential HMGETs of 16 x 512 KiB chunks each, then its sha256 "
            "check); *of which sha256*: hashing the same bytes once more, on its own; *parse*: "
            "`parse_adapter` against the Llama-2-7B `ModelConfig` (shape/rank validation, B "
            "pre-scaled, fp32 conversion, NaN/inf check; in a thread, as the pager runs it); *copy to "
            "slot*: `LoraWeights.load` into one fp16 slot (`max_loras=1`, `max_rank` = the adapter's "
            "rank); *best*: the fastest of the runs.",
            "",
            cold_tables(cold)[0],
            "",
            "The same adapter from local files instead of Redis (read both PEFT files, then the same "
            "parse and copy), from the page cache, and after `posix_fadvise(DONTNEED)` on the weights "
            "file (best effort: how cold that is depends on the kernel and the virtual disk).",
            "",
            cold_tables(cold)[1],
            "",
            "Parsed adapters are held in fp32 on the host: "
            + ", ".join(f"rank {r.rank} {r.host_mb:.0f} MiB" for r in cold)
            + "; one device slot of that rank in fp16: "
            + ", ".join(f"{r.slot_mb:.0f} MiB" for r in cold)
            + ".",
        ]
    if zrows:
        parts += [
            "",
            "### Zipf popularity over a large catalogue",
            "",
            f"{args.catalog} adapters registered (rank {args.adapter_rank}, all seven targets, on the "
            f"demo model: hidden 128, intermediate 256, 4 layers; fp16 files).  One in-process worker "
            f"(role both, CPU, fp32, {args.slots} device slots, max {args.concurrency} sequences) is "
            f"driven over NATS like the scheduler drives it, {args.concurrency} requests in flight "
            f"(closed loop); each request picks its adapter from Zipf(alpha) over the catalogue, a "
            f"random {args.prompt_len}-token prompt and {args.output_len} greedy output tokens.  "
            f"{args.warmup} warm-up requests, then {args.requests} measured.  *loraplex*: Redis -> "
            f"host LRU ({args.host_cache_mb} MiB, about {args.host_cache_mb * 4} parsed adapters) -> "
            "device slots.  *disk on every miss*: the same worker, but the fetch reads the PEFT files "
            "from a local directory (page cache warm) and there is no host tier (1-byte budget: an "
            "adapter leaves host memory and its slot as soon as no request uses it).",
            "",
            zipf_table(zrows),
            "",
            "*host hit*: requests that needed no fetch (adapter resident, or already being fetched for "
            "another request); *slot hit*: requests admitted without copying weights into a device slot; "
            "*tokens/s*: generated tokens / wall time of the measured requests; latency from publishing "
            "the request to its last token.  *retried / failed*: requests that got a `RequestError` and "
            "were sent again (up to 3 times) / that never succeeded.  The worker handles the "
            "`PrefillAssign`s on its subject one at a time and awaits each request's adapter fetch "
            "before taking the next (see the strict-xfail "
            "`test_requests_are_admitted_while_another_adapter_pages_in`), so misses also delay the "
            "admission of the requests behind them; both systems pay this, the disk baseline on more "
            "requests.",
        ]
    parts += [
        "",
        "Not measured here: GPU transfers and kernels, Redis over a real network, several workers "
        "sharing one Redis, and adapters larger than the host budget.  The tiny model makes decoding "
        "cheap, so the paging overhead weighs more in tokens/s than it would next to a 7B model's "
        "steps; the cold-load table is the one to scale from.",
    ]
    return "\n".join(parts)


async def amain(args: Args, argv: Sequence[str]) -> int:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-adapters-") as tmp:
        root = Path(tmp)
        redis = start_redis(root / "redis", appendonly=False)
        nats = start_nats(root / "nats")
        try:
            cold: list[ColdRow] = []
            zrows: list[ZipfRow] = []
            if not args.skip_cold:
                print(f"cold load (ranks {args.ranks}, {args.repeats} repeats)", flush=True)
                cold = await cold_load(args, redis.url, root)
            if not args.skip_zipf:
                print(f"zipf ({args.catalog} adapters, alphas {args.alphas})", flush=True)
                zrows = await zipf(args, nats.url, redis.url, root)
        finally:
            nats.stop()
            redis.stop()
    seconds = time.perf_counter() - started
    load = (load_before, os.getloadavg()[0])
    if cold:
        print("\n" + "\n\n".join(cold_tables(cold)))
    if zrows:
        print("\n" + zipf_table(zrows))
    print(f"\ntotal {seconds:.0f}s")
    if args.write_docs:
        replace_doc_section(SECTION, docs_body(args, argv, cold, zrows, seconds, load))
        print("updated docs/benchmarks.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(amain(parse_args(argv), argv))


if __name__ == "__main__":
    raise SystemExit(main())
