"""Deterministic random HF-format checkpoints and PEFT LoRA adapters (no transformers/peft)."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_ARCHES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
ATTN_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
ALL_MODULES: tuple[str, ...] = ATTN_MODULES + MLP_MODULES
# Logit std ~= LM_HEAD_GAIN, so the greedy top-1 is usually well separated from top-2.
_LM_HEAD_GAIN = 4.0


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and init of a tiny random decoder (Llama family)."""

    arch: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    vocab_size: int = 1024
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 256
    sliding_window: int | None = None
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 0
    eos_token_id: int = 1
    seed: int = 0
    num_shards: int = 1
    # None: fan-in scaled (1/sqrt(in)) projections, which keeps the residual stream O(1).
    init_std: float | None = None

    def __post_init__(self) -> None:
        if self.arch not in _ARCHES:
            raise ValueError(f"arch must be one of {sorted(_ARCHES)}, got {self.arch!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must divide by num_heads when head_dim is None")
        if self.sliding_window is not None and self.arch != "mistral":
            raise ValueError("sliding_window is only supported for arch='mistral'")
        if not (
            0 <= self.bos_token_id < self.vocab_size and 0 <= self.eos_token_id < self.vocab_size
        ):
            raise ValueError("bos/eos token ids must lie inside the vocabulary")
        if self.num_shards < 1:
            raise ValueError("num_shards must be >= 1")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def module_shape(self, module: str) -> tuple[int, int]:
        """(out_features, in_features) of a projection in one decoder layer."""
        h, i, d = self.hidden_size, self.intermediate_size, self.resolved_head_dim
        shapes = {
            "q_proj": (self.num_heads * d, h),
            "k_proj": (self.num_kv_heads * d, h),
            "v_proj": (self.num_kv_heads * d, h),
            "o_proj": (h, self.num_heads * d),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }
        return shapes[module]


def _module_prefix(layer: int, module: str) -> str:
    group = "self_attn" if module in ATTN_MODULES else "mlp"
    return f"model.layers.{layer}.{group}.{module}"


def _randn(shape: Sequence[int], std: float, seed: int, name: str) -> torch.Tensor:
    # One generator per tensor (seeded by name) so tying/sharding never shifts other tensors.
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * std


def _dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def model_config(spec: TinyModelSpec) -> dict[str, Any]:
    """HF config.json contents for `spec`."""
    cfg: dict[str, Any] = {
        "architectures": [_ARCHES[spec.arch]],
        "model_type": spec.arch,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if spec.rope_scaling is not None:
        cfg["rope_scaling"] = dict(spec.rope_scaling)
    if spec.arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif spec.arch == "mistral":
        cfg.update(attention_bias=False, sliding_window=spec.sliding_window)
    else:  # qwen2: q/k/v always carry biases in HF, so no attention_bias key.
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=spec.num_layers)
    return cfg


def random_model_tensors(spec: TinyModelSpec) -> dict[str, torch.Tensor]:
    """All weights in HF names, in canonical (embed, layers, norm, head) order."""
    h, s = spec.hidden_size, spec.seed

    def proj_std(fan_in: int) -> float:
        return spec.init_std if spec.init_std is not None else 1.0 / math.sqrt(fan_in)

    def norm(name: str) -> torch.Tensor:
        return 1.0 + _randn((h,), 0.05, s, name)

    out: dict[str, torch.Tensor] = {}
    out["model.embed_tokens.weight"] = _randn((spec.vocab_size, h), 1.0, s, "embed")
    for layer in range(spec.num_layers):
        out[f"model.layers.{layer}.input_layernorm.weight"] = norm(f"ln1.{layer}")
        for module in ALL_MODULES:
            prefix = _module_prefix(layer, module)
            shape = spec.module_shape(module)
            out[f"{prefix}.weight"] = _randn(shape, proj_std(shape[1]), s, prefix)
            if spec.arch == "qwen2" and module in ("q_proj", "k_proj", "v_proj"):
                out[f"{prefix}.bias"] = _randn(shape[:1], 0.1, s, f"{prefix}.bias")
            if module == "o_proj":
                out[f"model.layers.{layer}.post_attention_layernorm.weight"] = norm(f"ln2.{layer}")
    out["model.norm.weight"] = norm("final_norm")
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = _randn(
            (spec.vocab_size, h), _LM_HEAD_GAIN / math.sqrt(h), s, "lm_head"
        )
    return out


def _shard_assignment(sizes: list[int], num_shards: int) -> list[int]:
    """Contiguous, byte-balanced, never-empty split of the tensor list."""
    if num_shards > len(sizes):
        raise ValueError(f"num_shards={num_shards} exceeds the {len(sizes)} tensors")
    total, cum, shard, out = sum(sizes), 0, 0, []
    for i, size in enumerate(sizes):
        out.append(shard)
        cum += size
        left = len(sizes) - i - 1
        if shard < num_shards - 1 and (
            cum * num_shards >= total * (shard + 1) or left == num_shards - 1 - shard
        ):
            shard += 1
    return out


def write_random_model(out_dir: Path, spec: TinyModelSpec) -> None:
    """Write config.json, generation_config.json and float32 safetensors weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _dump_json(out_dir / "config.json", model_config(spec))
    _dump_json(
        out_dir / "generation_config.json",
        {"bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id, "do_sample": False},
    )
    tensors = random_model_tensors(spec)
    meta = {"format": "pt"}
    if spec.num_shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata=meta)
        return
    names = list(tensors)
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    assign = _shard_assignment(sizes, spec.num_shards)
    files = [
        f"model-{k + 1:05d}-of-{spec.num_shards:05d}.safetensors" for k in range(spec.num_shards)
    ]
    for k, fname in enumerate(files):
        part = {n: tensors[n] for n, a in zip(names, assign, strict=True) if a == k}
        save_file(part, str(out_dir / fname), metadata=meta)
    index = {
        "metadata": {"total_size": sum(sizes)},
        "weight_map": {n: files[a] for n, a in zip(names, assign, strict=True)},
    }
    _dump_json(out_dir / "model.safetensors.index.json", index)


def lora_scaling(rank: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scale: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def write_random_adapter(
    out_dir: Path,
    spec: TinyModelSpec,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    use_rslora: bool = False,
    seed: int = 0,
    std: float | None = None,
    strength: float = 0.5,
    base_model_name_or_path: str = "loraplex-demo",
) -> None:
    """Write a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors).

    B's std defaults to a value making the scaled update about `strength` times the
    base projection's output magnitude, so greedy outputs visibly change.
    """
    bad = sorted(set(targets) - set(ALL_MODULES))
    if bad or not targets:
        raise ValueError(
            f"targets must be a non-empty subset of {ALL_MODULES}, got {list(targets)}"
        )
    if rank < 1:
        raise ValueError("rank must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = lora_scaling(rank, alpha, use_rslora)
    b_std = std if std is not None else strength / (scale * math.sqrt(rank))
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(spec.num_layers):
        for module in (m for m in ALL_MODULES if m in targets):
            out_f, in_f = spec.module_shape(module)
            key = f"base_model.model.{_module_prefix(layer, module)}"
            a_key, b_key = f"{key}.lora_A.weight", f"{key}.lora_B.weight"
            tensors[a_key] = _randn((rank, in_f), 1.0 / math.sqrt(in_f), seed, a_key)
            tensors[b_key] = _randn((out_f, rank), b_std, seed, b_key)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    _dump_json(
        out_dir / "adapter_config.json",
        {
            "alpha_pattern": {},
            "base_model_name_or_path": base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "layers_pattern": None,
            "layers_to_transform": None,
            "lora_alpha": alpha,
            "lora_dropout": 0.0,
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": rank,
            "rank_pattern": {},
            "revision": None,
            "target_modules": sorted(set(targets)),
            "task_type": "CAUSAL_LM",
            "use_dora": False,
            "use_rslora": use_rslora,
        },
    )
