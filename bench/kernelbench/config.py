"""Constants, model shapes and the benchmark grids (full, --quick, --smoke)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

SECTION = "Kernels on the GPU (bench/kernels.py)"
TARGET_FLOOR_X = 2.0  # SGMV/BGMV time / floor
TARGET_OVERHEAD = 0.10  # decode step with 32 distinct rank-16 adapters vs no adapters
BIG_FLOOR_S = 10e-6  # rows with a smaller floor are dominated by kernel launch latency
POPULARITIES = ("distinct", "uniform", "zipf")
PARTS = ("lora", "attn", "decode")

LLAMA2_7B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# --smoke: tiny, with grouped-query attention and an intermediate size that is no power of two.
TINY: dict[str, Any] = {
    **LLAMA2_7B,
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Grid:
    max_rank: int  # storage rank of the slot stacks (the engine's max_lora_rank)
    rank_patterns: tuple[tuple[int, ...], ...]  # rank sweep: adapter j has pattern[j % len]
    rank_groups: tuple[str, ...]  # projection groups of the rank sweep
    load_ranks: tuple[int, ...]  # rank pattern of the batch / adapters / popularity sweep
    adapters: tuple[int, ...]
    bgmv_rank_rows: int
    bgmv_rows: tuple[int, ...]
    sgmv_rank_shape: tuple[int, int]  # (requests, tokens per request)
    sgmv_shapes: tuple[tuple[int, int], ...]
    prefill_tokens: int  # every prefill-attention case packs this many tokens
    prefill_piece: tuple[int, int]  # length range of the mixed-length prefill case
    prefill_equal: tuple[int, ...]  # equal-length prefill cases (prompt length)
    decode_attn: tuple[tuple[int, int], ...]  # (batch, context); context 0 = mixed up to max
    decode_attn_max_ctx: int
    block_size: int
    # LoRA scale sweep: BGMV, one layer, this many rows, with 1 .. n distinct adapters.
    scale_rows: int = 64
    scale_adapters: tuple[int, ...] = (1, 8, 32, 128)
    # Chunked prefill / prefix-cache hits: (prompts, cached tokens each, new tokens each).
    prefill_paged: tuple[tuple[int, int, int], ...] = ()


FULL_GRID = Grid(
    max_rank=64,
    rank_patterns=((8,), (16,), (32,), (64,), (8, 16, 64)),
    rank_groups=("qkv", "o", "gate_up", "down", "layer"),
    load_ranks=(16,),
    adapters=(1, 4, 16, 32, 64),
    bgmv_rank_rows=32,
    bgmv_rows=(1, 8, 32, 64),
    sgmv_rank_shape=(8, 256),
    sgmv_shapes=((4, 512), (16, 128), (16, 512), (64, 128)),
    prefill_tokens=4096,
    prefill_piece=(32, 1024),
    prefill_equal=(2048, 512, 128),
    decode_attn=(
        (1, 512),
        (8, 512),
        (32, 512),
        (64, 512),
        (1, 2048),
        (8, 2048),
        (32, 2048),
        (64, 2048),
        (32, 0),
    ),
    decode_attn_max_ctx=2048,
    block_size=16,
    prefill_paged=((8, 384, 128), (1, 3584, 512), (16, 1000, 1)),
)
QUICK_GRID = dataclasses.replace(
    FULL_GRID,
    rank_groups=("gate_up", "layer"),
    adapters=(1, 16, 64),
    bgmv_rows=(1, 32, 64),
    sgmv_shapes=((16, 128), (16, 512)),
    prefill_equal=(512,),
    decode_attn=((32, 512), (64, 2048), (32, 0)),
    prefill_paged=((8, 384, 128), (1, 3584, 512)),
)
SMOKE_GRID = Grid(
    max_rank=8,
    rank_patterns=((4,), (8,), (2, 4, 8)),
    rank_groups=("qkv", "o", "gate_up", "down", "layer"),
    load_ranks=(4,),
    adapters=(1, 2, 4),
    bgmv_rank_rows=4,
    bgmv_rows=(1, 4),
    sgmv_rank_shape=(3, 5),
    sgmv_shapes=((2, 8), (4, 4)),
    prefill_tokens=16,
    prefill_piece=(2, 8),
    prefill_equal=(8, 4),
    decode_attn=((1, 8), (4, 24), (4, 0)),
    decode_attn_max_ctx=24,
    block_size=8,
    prefill_paged=((2, 5, 3),),
)
