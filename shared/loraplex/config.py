"""Frozen configuration objects shared by the engine and the services."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex import env
from loraplex.errors import InvalidRequestError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits.  ``num_kv_blocks=None`` sizes the cache from ``kv_cache_memory_mb`` or,
    failing that, to hold ``max_num_seqs`` sequences of ``max_model_len`` tokens."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # default: the model's max_position_embeddings (capped 8192)
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_mb: int = 0
    max_loras: int = 8
    max_lora_rank: int = 64
    seed: int = 0
    # CUDA graphs for decode steps of up to this many rows (capped at max_num_seqs); vLLM's name.
    enforce_eager: bool = False
    # Reuse the K/V of full blocks shared with earlier prompts (same adapter), as vLLM/SGLang do.
    enable_prefix_caching: bool = True
    max_cuda_graph_batch_size: int = 256
    # Fraction of the GPU's TOTAL memory for weights + activations + K/V (vLLM's meaning); the
    # K/V cache gets what is left (engine/memory_budget.py).  Ignored on the CPU.
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "block_size",
            "max_loras",
            "max_lora_rank",
            "max_cuda_graph_batch_size",
        ):
            if getattr(self, name) < 1:
                raise InvalidRequestError(f"{name} must be positive")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidRequestError("gpu_memory_utilization must be in (0, 1]")
        if self.max_lora_rank > 512:
            raise InvalidRequestError("max_lora_rank above 512 is not supported")

    @classmethod
    def with_env_defaults(cls, **overrides: object) -> EngineConfig:
        base = {"block_size": env.BLOCK_SIZE.get(), "kv_cache_memory_mb": env.KV_CACHE_MEMORY.get()}
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]
