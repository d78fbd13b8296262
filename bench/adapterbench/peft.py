"""Random PEFT adapters: build, write to disk, drop from the page cache, register in Redis."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from loraplex.adapters.store import AdapterStore
from loraplex.lora.adapter import LORA_TARGETS
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.model.config import ModelConfig

from .config import MLP, OWNER


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
