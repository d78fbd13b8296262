"""Part 1: cold load of Llama-2-7B-sized adapters, Redis -> device slot vs local files."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.adapters.keys import adapter_id
from loraplex.adapters.store import AdapterStore
from loraplex.lora.adapter import LORA_TARGETS, parse_adapter
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.weights import LoraWeights
from loraplex.model.config import ModelConfig

from .config import LLAMA2_7B, MB, OWNER
from .options import Args
from .peft import drop_page_cache, peft_adapter, write_peft


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
                got = await store.fetch(adapter_id(OWNER, name))
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
