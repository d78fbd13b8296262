"""The checkpoint of ``bench/engine_gpu.py``, written locally: random weights with Llama-2-7B
layer shapes (or tiny ones), the demo tokenizer and rank-``r`` adapters on all 7 targets."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraplex.tooling.demo import (
    ALL_MODULES,
    TinyModelSpec,
    model_config,
    random_model_tensors,
    write_demo_tokenizer,
    write_random_adapter,
)

from .gpu_options import GpuArgs

ALPHA_PER_RANK = 2  # alpha = 2 x rank (alpha 32 at rank 16, as in the H200 baseline)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def model_spec(args: GpuArgs, vocab: int) -> TinyModelSpec:
    d = args.dims
    return TinyModelSpec(
        arch="llama",
        hidden_size=d["hidden"],
        intermediate_size=d["intermediate"],
        num_layers=args.layers,
        num_heads=d["heads"],
        num_kv_heads=d["kv_heads"],
        vocab_size=vocab,
        max_position_embeddings=max(4096, args.prompt_len + args.output_len + 16),
        seed=0,
    )


def write_checkpoint(root: Path, args: GpuArgs) -> tuple[TinyModelSpec, dict[str, Path]]:
    """``root/model`` in the benchmark dtype (half the bytes of fp32 to write and read) and
    ``args.adapters`` adapters under ``root/adapters``."""
    model_dir = root / "model"
    vocab = write_demo_tokenizer(model_dir, 2048)  # the demo BPE saturates below 2048
    spec = model_spec(args, vocab)
    dtype = DTYPES[args.dtype]
    tensors = {k: v.to(dtype).contiguous() for k, v in random_model_tensors(spec).items()}
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config = model_config(spec) | {"torch_dtype": args.dtype}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}
    (model_dir / "generation_config.json").write_text(json.dumps(gen) + "\n")
    paths = {}
    for i in range(args.adapters):
        paths[f"lora-{i}"] = path = root / "adapters" / f"lora-{i}"
        write_random_adapter(
            path,
            spec,
            rank=args.rank,
            alpha=ALPHA_PER_RANK * args.rank,
            targets=ALL_MODULES,
            seed=i + 1,
        )
    return spec, paths
