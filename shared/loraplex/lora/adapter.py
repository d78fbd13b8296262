"""PEFT LoRA adapters: parse, validate against the base model, and hold host-side weights.

The config is checked by ``config_check``, the tensors by ``tensor_check`` (the header first,
then one A/B pair at a time).  ``parse_adapter`` (workers, the offline ``LLM``) keeps the scaled
weights as torch tensors; ``adapter_check.check_adapter_file`` (adapter registration, torch-free)
runs the same walk and keeps nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.errors import AdapterError
from loraplex.lora.config_check import LORA_TARGETS, parse_config
from loraplex.lora.names import CONFIG_FILE, NAME_PATTERN, WEIGHTS_FILE, validate_name
from loraplex.lora.tensor_check import walk, weights_bytes
from loraplex.model.config import ModelConfig

__all__ = [
    "CONFIG_FILE",
    "LORA_TARGETS",
    "NAME_PATTERN",
    "WEIGHTS_FILE",
    "LoraAdapter",
    "LoraModule",
    "load_adapter_dir",
    "parse_adapter",
    "validate_name",
]


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
    name: str,
    config_bytes: bytes,
    weight_bytes: bytes,
    model: ModelConfig,
    max_rank: int,
    max_abs_weight: float | None = None,
) -> LoraAdapter:
    """Validate raw PEFT files against the base model; every failure is an AdapterError saying
    why.  ``max_abs_weight``: None reads ``LORAPLEX_ADAPTER_MAX_ABS_WEIGHT``."""
    validate_name(name)
    config = parse_config(name, config_bytes)
    source = weights_bytes(name, weight_bytes)
    modules = {
        at: LoraModule(torch.from_numpy(a), torch.from_numpy(b))
        for at, a, b in walk(name, config, source, model, max_rank, max_abs_weight)
    }
    return LoraAdapter(
        name=name,
        rank=max(m.rank for m in modules.values()),
        alpha=config.alpha,
        use_rslora=config.use_rslora,
        targets=tuple(t for t in LORA_TARGETS if any(t == tt for _, tt in modules)),
        modules=modules,
    )
