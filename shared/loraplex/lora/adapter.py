"""PEFT LoRA adapters: parse, validate against the base model, and hold host-side weights."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes

from loraplex.errors import AdapterError
from loraplex.lora.names import CONFIG_FILE, NAME_PATTERN, WEIGHTS_FILE, validate_name
from loraplex.model.config import ModelConfig

__all__ = [
    "CONFIG_FILE",
    "NAME_PATTERN",
    "WEIGHTS_FILE",
    "LoraAdapter",
    "LoraModule",
    "load_adapter_dir",
    "parse_adapter",
    "validate_name",
]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (optionally lora_A.<adapter>.weight)
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


@dataclass(frozen=True)
class LoraModule:
    """One adapted projection at one layer. a: [r, in]; b: [out, r], already times the scaling."""

    a: torch.Tensor
    b: torch.Tensor

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoraAdapter:
    """A validated adapter in host memory, keyed by (layer, target)."""

    name: str
    rank: int
    alpha: float
    use_rslora: bool
    targets: tuple[str, ...]
    modules: dict[tuple[int, str], LoraModule]

    @property
    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())


def load_adapter_dir(path: str | Path, name: str, model: ModelConfig, max_rank: int) -> LoraAdapter:
    """Read ``adapter_config.json`` + ``adapter_model.safetensors`` from a directory."""
    root = Path(path)
    if not root.is_dir():
        raise AdapterError(f"adapter path {str(root)!r} is not a directory")
    cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise AdapterError(f"adapter {name!r}: missing {CONFIG_FILE} in {root}")
    if not w_path.is_file():
        hint = (
            " (.bin checkpoints are not loaded: convert to safetensors)"
            if (root / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterError(f"adapter {name!r}: missing {WEIGHTS_FILE} in {root}{hint}")
    return parse_adapter(name, cfg_path.read_bytes(), w_path.read_bytes(), model, max_rank)


def parse_adapter(
    name: str, config_bytes: bytes, weight_bytes: bytes, model: ModelConfig, max_rank: int
) -> LoraAdapter:
    """Validate raw PEFT files against the base model; every failure is an AdapterError saying why."""
    validate_name(name)
    try:
        config = json.loads(config_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"adapter {name!r}: {CONFIG_FILE} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {name!r}: {CONFIG_FILE} must be a JSON object")
    _check_config(name, config)
    try:
        tensors = load_safetensors_bytes(weight_bytes)
    except Exception as e:  # safetensors raises several types for corrupt input
        raise AdapterError(
            f"adapter {name!r}: {WEIGHTS_FILE} is not a valid safetensors file ({e})"
        ) from e
    return _build(name, config, tensors, model, max_rank)


def _check_config(name: str, config: dict[str, Any]) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {name!r}: DoRA adapters are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"adapter {name!r}: bias={config.get('bias')!r} is not supported (need 'none')"
        )
    if config.get("modules_to_save"):
        raise AdapterError(
            f"adapter {name!r}: modules_to_save {config['modules_to_save']} is not supported"
        )
    if not isinstance(config.get("r", 8), int) or config.get("r", 8) < 1:
        raise AdapterError(f"adapter {name!r}: r must be a positive integer")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches rank/alpha patterns against the end of the module's dotted name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _build(
    name: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    model: ModelConfig,
    max_rank: int,
) -> LoraAdapter:
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(
                f"adapter {name!r}: unexpected tensor {key!r} (only LoRA A/B of {', '.join(LORA_TARGETS)})"
            )
        layer, target, which = int(m.group(1)), m.group(2), m.group(3)
        if target not in LORA_TARGETS:
            raise AdapterError(
                f"adapter {name!r}: unknown target module {target!r}; supported: {', '.join(LORA_TARGETS)}"
            )
        if layer >= model.num_layers:
            raise AdapterError(
                f"adapter {name!r}: layer {layer} in {key!r} but the model has {model.num_layers} layers"
            )
        pairs.setdefault((layer, target), {})[which] = tensor
    if not pairs:
        raise AdapterError(f"adapter {name!r}: no LoRA weights found")
    alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    rank_pattern, alpha_pattern = (
        config.get("rank_pattern") or {},
        config.get("alpha_pattern") or {},
    )
    modules: dict[tuple[int, str], LoraModule] = {}
    for (layer, target), ab in sorted(pairs.items()):
        where = f"layer {layer} {target}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(
                f"adapter {name!r}: {where} has lora_{next(iter(ab))} without its pair"
            )
        a, b = ab["A"], ab["B"]
        in_f, out_f = model.module_shape(target)
        r = a.shape[0] if a.dim() == 2 else -1
        if (
            a.dim() != 2
            or b.dim() != 2
            or a.shape[1] != in_f
            or b.shape[0] != out_f
            or b.shape[1] != r
        ):
            raise AdapterError(
                f"adapter {name!r}: {where} has A {tuple(a.shape)} and B {tuple(b.shape)}; "
                f"the base model needs A [r, {in_f}] and B [{out_f}, r]"
            )
        block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        module = f"model.layers.{layer}.{block}.{target}"
        want_r = int(_pattern_value(rank_pattern, module, config.get("r", r)))
        if want_r != r:
            raise AdapterError(
                f"adapter {name!r}: {where} has rank {r} but adapter_config.json says r={want_r}"
            )
        if r > max_rank:
            raise AdapterError(
                f"adapter {name!r}: rank {r} exceeds the server's max_lora_rank {max_rank}"
            )
        if not (a.is_floating_point() and b.is_floating_point()):
            raise AdapterError(f"adapter {name!r}: {where} weights must be floating point")
        mod_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        scaling = mod_alpha / (math.sqrt(r) if rslora else r)
        a32, b32 = a.float(), b.float() * scaling
        if not (torch.isfinite(a32).all() and torch.isfinite(b32).all()):
            raise AdapterError(f"adapter {name!r}: {where} holds NaN or infinite values")
        modules[(layer, target)] = LoraModule(a=a32.contiguous(), b=b32.contiguous())
    targets = tuple(t for t in LORA_TARGETS if any(t == tt for _, tt in modules))
    return LoraAdapter(
        name=name,
        rank=max(m.rank for m in modules.values()),
        alpha=alpha,
        use_rslora=rslora,
        targets=targets,
        modules=modules,
    )
