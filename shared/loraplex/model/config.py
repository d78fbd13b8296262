"""The model's shape and options, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplex.errors import ModelLoadError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "dynamic")


# Default context cap: a 128k-context model would otherwise size every request for 128k.
MAX_MODEL_LEN_CAP = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to know about a checkpoint (immutable)."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    hidden_act: str = "silu"

    @property
    def default_max_model_len(self) -> int:
        """Context per request when none is given: the model's, at most ``MAX_MODEL_LEN_CAP``
        (workers size their K/V from it; the gateway refuses longer requests up front)."""
        return min(self.max_position_embeddings, MAX_MODEL_LEN_CAP)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def module_shape(self, target: str) -> tuple[int, int]:
        """(in_features, out_features) of a LoRA-targetable projection."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {
            "q_proj": (h, self.q_size),
            "k_proj": (h, self.kv_size),
            "v_proj": (h, self.kv_size),
            "o_proj": (self.q_size, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        return shapes[target]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelLoadError(
                f"{model_dir}: no config.json (is this a Hugging Face model directory?)"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
        gen_path = Path(model_dir) / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        return cls.from_hf_dict(raw, gen)

    @classmethod
    def from_hf_dict(
        cls, raw: dict[str, Any], generation: dict[str, Any] | None = None
    ) -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next(
            (SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None
        )
        if arch is None:
            arch = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}.get(
                raw.get("model_type", "")
            )
        if arch is None:
            raise UnsupportedModelError(
                f"unsupported architecture {archs or raw.get('model_type')!r}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            cfg = {
                "arch": arch,
                "vocab_size": int(raw["vocab_size"]),
                "hidden_size": hidden,
                "intermediate_size": int(raw["intermediate_size"]),
                "num_layers": int(raw["num_hidden_layers"]),
                "num_heads": heads,
                "num_kv_heads": int(raw.get("num_key_value_heads") or heads),
                "head_dim": int(raw.get("head_dim") or hidden // heads),
                "rms_norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
            }
        except KeyError as e:
            raise ModelLoadError(f"config.json lacks required key {e.args[0]!r}") from e
        # transformers >= 5 nests RoPE settings under rope_parameters; older configs use
        # rope_theta + rope_scaling at top level.
        rope = dict(raw.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = raw.get("rope_scaling") or rope or None
        if scaling:
            scaling = dict(scaling)
            scaling.pop("rope_theta", None)
            kind = scaling.get("rope_type") or scaling.get("type") or "default"
            scaling["rope_type"] = kind
            scaling.pop("type", None)
            if kind not in SUPPORTED_ROPE_TYPES:
                raise UnsupportedModelError(f"unsupported rope_scaling type {kind!r}")
            if kind == "default":
                scaling = None
        if cfg["num_heads"] % cfg["num_kv_heads"]:
            raise ModelLoadError("num_attention_heads must be a multiple of num_key_value_heads")
        act = raw.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"unsupported hidden_act {act!r}")
        window = raw.get("sliding_window")
        if arch == "qwen2" and not raw.get("use_sliding_window", False):
            window = None
        eos = (generation or {}).get("eos_token_id", raw.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            **cfg,
            rope_theta=theta,
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
            o_bias=arch != "qwen2" and bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=int(window) if window else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
