"""The checks of an adapter's tensors: names and pairs, shapes, ranks and dtypes against the
base model and the config (from the safetensors header alone), then each pair's values, read one
pair at a time from a ``TensorSource`` (a dict of loaded tensors, or a file read lazily)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from loraplex import env
from loraplex.errors import AdapterError
from loraplex.lora.config_check import LORA_TARGETS, LoraConfig, check_targets, module_name
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.patterns import MatchBudget
from loraplex.model.config import ModelConfig

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (optionally lora_A.<adapter>.weight)
_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight"
)


class TensorSource(Protocol):
    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def is_float(self, key: str) -> bool: ...
    def tensor(self, key: str) -> torch.Tensor: ...


class TensorDict:
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def is_float(self, key: str) -> bool:
        return self.tensors[key].is_floating_point()

    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class TensorFile:
    """A safetensors file read lazily: the header now, each tensor when asked.  safe_open maps
    the file, and the pages read through a mapping count in the process's RSS while it lives, so
    each tensor is read through a mapping of its own, gone with the tensor: RSS stays flat (a
    400 MiB upload: +20-30 MiB instead of +400)."""

    def __init__(self, handle: object, path: str) -> None:
        self.f = handle
        self.path = path

    def keys(self) -> list[str]:
        return list(self.f.keys())  # type: ignore[attr-defined]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.f.get_slice(key).get_shape())  # type: ignore[attr-defined]

    def is_float(self, key: str) -> bool:
        dtype = self.f.get_slice(key).get_dtype()  # type: ignore[attr-defined]
        return dtype.startswith(("F", "BF"))  # F64/F32/F16/BF16/F8_*; not I*, U*, BOOL

    def tensor(self, key: str) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(key)


@contextmanager
def open_weights_file(name: str, path: str | Path) -> Iterator[TensorFile]:
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as e:
        raise not_safetensors(name, e) from e
    with handle:
        yield TensorFile(handle, str(path))


def not_safetensors(name: str, e: Exception) -> AdapterError:
    return AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is not a valid safetensors file ({e})")


def _max_abs_weight(given: float | None) -> float:
    # A real fine-tune stays orders of magnitude below the default (1e3): PEFT initialises A
    # Kaiming-uniform, |a| <= 1/sqrt(in_features) (0.016 at 4096), and B at 0, and training moves
    # both by lr-sized steps (1e-5..1e-3); even SVD inits (PiSSA, OLoRA) give entries of
    # sqrt(singular value), under ~10.  Far beyond it, activations overflow to inf in half
    # precision and the sampler fails: such an adapter is an attack, refused before it is stored.
    bound = env.ADAPTER_MAX_ABS_WEIGHT.get() if given is None else given
    if not bound > 0:
        raise ValueError(f"the adapter weight bound must be positive, got {bound}")
    return bound


def walk(
    name: str,
    config: LoraConfig,
    source: TensorSource,
    model: ModelConfig,
    max_rank: int,
    max_abs_weight: float | None,
) -> Iterator[tuple[tuple[int, str], torch.Tensor, torch.Tensor]]:
    """Check every pair against the header, then yield each pair's ``(layer, target)``, A and
    B times its scaling (float32), values checked.  ``max_abs_weight`` None: the registry's."""
    bound = _max_abs_weight(max_abs_weight)
    budget = MatchBudget(name)
    check_targets(name, config, model.num_layers, budget)
    pairs = _pairs(name, source.keys(), model)
    scalings = {}
    for at, keys in pairs.items():  # every header check before reading any tensor
        scalings[at] = _check_pair(name, config, source, model, max_rank, budget, at, keys)
    for at, (a_key, b_key) in pairs.items():
        a, b, scaling = source.tensor(a_key), source.tensor(b_key), scalings[at]
        a32 = _checked(name, a_key, a.float(), 1.0, bound)
        b32 = _checked(name, b_key, b.float(), scaling, bound)
        yield at, a32.contiguous(), (b32 * scaling).contiguous()


def _pairs(
    name: str, keys: list[str], model: ModelConfig
) -> dict[tuple[int, str], tuple[str, str]]:
    """(layer, target) -> (A key, B key), sorted; names, targets, layers and pairing checked."""
    found: dict[tuple[int, str], dict[str, str]] = {}
    for key in keys:
        m = _KEY.fullmatch(key)
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
        pair = found.setdefault((layer, target), {})
        if which in pair:
            raise AdapterError(
                f"adapter {name!r}: tensors {pair[which]!r} and {key!r} are both lora_{which} of layer {layer} {target}"
            )
        pair[which] = key
    if not found:
        raise AdapterError(f"adapter {name!r}: no LoRA weights found")
    for (layer, target), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(
                f"adapter {name!r}: layer {layer} {target} has lora_{next(iter(ab))} without its pair"
            )
    return {at: (ab["A"], ab["B"]) for at, ab in sorted(found.items())}


def _check_pair(
    name: str,
    config: LoraConfig,
    source: TensorSource,
    model: ModelConfig,
    max_rank: int,
    budget: MatchBudget,
    at: tuple[int, str],
    keys: tuple[str, str],
) -> float:
    """The header's checks of one pair (shapes, rank, dtype, config); returns its scaling."""
    (layer, target), (a_key, b_key) = at, keys
    where = f"layer {layer} {target}"
    a, b = source.shape(a_key), source.shape(b_key)
    in_f, out_f = model.module_shape(target)
    r = a[0] if len(a) == 2 else -1
    if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or b[1] != r:
        raise AdapterError(
            f"adapter {name!r}: {where} has A {a} and B {b}; "
            f"the base model needs A [r, {in_f}] and B [{out_f}, r]"
        )
    if r < 1:
        raise AdapterError(f"adapter {name!r}: {where} has rank 0 (A {a}); LoRA needs rank >= 1")
    module = module_name(layer, target)
    if not config.adapts(module, budget):
        raise AdapterError(
            f"adapter {name!r}: tensor {a_key!r} adapts {module}, which {CONFIG_FILE} field "
            "'target_modules' does not include"
        )
    if config.layers is not None and layer not in config.layers:
        raise AdapterError(
            f"adapter {name!r}: tensor {a_key!r} is in layer {layer}, which {CONFIG_FILE} field "
            "'layers_to_transform' does not include"
        )
    want_r = config.rank_for(module, budget) or r
    if want_r != r:
        raise AdapterError(
            f"adapter {name!r}: {where} has rank {r} but {CONFIG_FILE} says r={want_r}"
        )
    if r > max_rank:
        raise AdapterError(
            f"adapter {name!r}: rank {r} exceeds the server's max_lora_rank {max_rank}"
        )
    if not (source.is_float(a_key) and source.is_float(b_key)):
        raise AdapterError(f"adapter {name!r}: {where} weights must be floating point")
    alpha = config.alpha_for(module, budget)
    return alpha / (math.sqrt(r) if config.use_rslora else r)


def _checked(name: str, key: str, w: torch.Tensor, scaling: float, bound: float) -> torch.Tensor:
    if not bool(torch.isfinite(w).all()):
        raise AdapterError(f"adapter {name!r}: tensor {key!r} holds NaN or infinite values")
    largest = float(w.abs().max()) * abs(scaling)  # a Python float: no overflow
    if largest > bound:
        scaled = f" (times its scaling {scaling:.3g})" if scaling != 1.0 else ""
        raise AdapterError(
            f"adapter {name!r}: tensor {key!r} reaches |w| = {largest:.3g}{scaled}, above the "
            f"bound of {bound:g} ({env.ADAPTER_MAX_ABS_WEIGHT.name}, --max-adapter-weight); "
            "trained LoRA weights stay far below it"
        )
    return w
