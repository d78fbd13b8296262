"""The checkpoint on disk (demo tokenizer, random Llama, rank-16 adapters) and the requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
    write_demo_tokenizer,
    write_random_adapter,
    write_random_model,
)

if TYPE_CHECKING:
    from .options import Args

RANK, ALPHA = 16, 32
PROMPT_SEED = 1234

Tokens = list[list[int]]


@dataclass(frozen=True)
class Workload:
    prompts: Tokens
    adapter_names: list[str]  # every adapter on disk; runs use the first n of them


def model_spec(hidden: int, layers: int, vocab: int, max_positions: int) -> TinyModelSpec:
    """Llama shape: head_dim 64, GQA with 2 query heads per KV head, SwiGLU at ~8/3 x hidden."""
    heads = hidden // 64
    return TinyModelSpec(
        arch="llama",
        hidden_size=hidden,
        intermediate_size=round(hidden * 8 / 3 / 64) * 64,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        head_dim=64,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        seed=0,
    )


def write_checkpoint(root: Path, args: Args) -> tuple[TinyModelSpec, dict[str, Path]]:
    """Demo tokenizer + random Llama + ``max(args.adapters)`` rank-16 all-target adapters."""
    model_dir = root / "model"
    # The demo BPE saturates below 2048 tokens on its corpus; the model uses the real size.
    vocab = write_demo_tokenizer(model_dir, 2048)
    spec = model_spec(args.hidden, args.layers, vocab, max_positions=2048)
    write_random_model(model_dir, spec)
    paths = {}
    for i in range(max(args.adapters)):
        paths[f"lora-{i}"] = path = root / "adapters" / f"lora-{i}"
        write_random_adapter(path, spec, rank=RANK, alpha=ALPHA, targets=ALL_MODULES, seed=i + 1)
    return spec, paths


def random_prompts(n: int, length: int, vocab: int) -> Tokens:
    """``n`` prompts of exactly ``length`` ids, avoiding the 4 special tokens of the demo vocab."""
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randint(4, vocab, (n, length), generator=gen).tolist()


def assign(n_requests: int, names: Sequence[str]) -> list[str]:
    """Round-robin: request i uses adapter i % len(names)."""
    return [names[i % len(names)] for i in range(n_requests)]
