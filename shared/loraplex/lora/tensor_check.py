"""The checks of an adapter's tensors: names and pairs, shapes, ranks and dtypes against the
base model and the config (from the safetensors header alone), then each pair's values, read one
pair at a time from a ``TensorSource`` (bytes in memory, or a file read lazily).  No torch: the
adapter-store and the gateway run it on uploads, workers on what they page in."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from loraplex import env
from loraplex.errors import AdapterError
from loraplex.lora.config_check import LORA_TARGETS, LoraConfig, check_targets, module_name
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.patterns import MatchBudget
from loraplex.lora.safetensors_numpy import (
    SafetensorsBytes,
    SafetensorsError,
    SafetensorsFile,
    TensorInfo,
)
from loraplex.model.config import ModelConfig

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (optionally lora_A.<adapter>.weight)
_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight"
)


class TensorSource(Protocol):
    """A safetensors file's header (``infos``) and its tensors decoded one at a time."""

    infos: dict[str, TensorInfo]

    def float32(self, name: str) -> np.ndarray: ...


@contextmanager
def open_weights_file(name: str, path: str | Path) -> Iterator[SafetensorsFile]:
    """The file's header read and checked; tensors are read when the walk asks (one pair held
    at a time, whatever the file's size)."""
    with open(path, "rb") as handle:
        try:
            source = SafetensorsFile(handle)
        except SafetensorsError as e:
            raise not_safetensors(name, e) from e
        yield source


def weights_bytes(name: str, data: bytes) -> SafetensorsBytes:
    try:
        return SafetensorsBytes(data)
    except SafetensorsError as e:
        raise not_safetensors(name, e) from e


def not_safetensors(name: str, e: Exception) -> AdapterError:
    return AdapterError(f"adapter {name!r}: {WEIGHTS_FILE} is not a valid safetensors file ({e})")


def checked_bound(given: float | None) -> float:
    """The bound on |w| of scaled adapter weights: ``given``, or the registry's when None."""
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
) -> Iterator[tuple[tuple[int, str], np.ndarray, np.ndarray]]:
    """Check every pair against the header, then yield each pair's ``(layer, target)``, A
    ``[r, in]`` and B times its scaling ``[out, r]`` (float32, C-contiguous), values checked.
    ``max_abs_weight`` None: the registry's."""
    bound = checked_bound(max_abs_weight)
    budget = MatchBudget(name)
    check_targets(name, config, model.num_layers, budget)
    pairs = _pairs(name, list(source.infos), model)
    scalings = {}
    for at, keys in pairs.items():  # every header check before reading any tensor
        scalings[at] = _check_pair(name, config, source, model, max_rank, budget, at, keys)
    for at, (a_key, b_key) in pairs.items():
        a32 = _checked(name, a_key, source.float32(a_key), 1.0, bound)
        b32 = _checked(name, b_key, source.float32(b_key), scalings[at], bound)
        yield at, np.ascontiguousarray(a32), np.ascontiguousarray(b32 * np.float32(scalings[at]))


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
    a, b = source.infos[a_key].shape, source.infos[b_key].shape
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
    if not (source.infos[a_key].is_float and source.infos[b_key].is_float):
        raise AdapterError(f"adapter {name!r}: {where} weights must be floating point")
    alpha = config.alpha_for(module, budget)
    return alpha / (math.sqrt(r) if config.use_rslora else r)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked(name: str, key: str, w: np.ndarray, scaling: float, bound: float) -> np.ndarray:
    if not bool(np.isfinite(w).all()):
        raise AdapterError(f"adapter {name!r}: tensor {key!r} holds NaN or infinite values")
    if not abs(scaling) <= FLOAT32_MAX:  # B is scaled in float32: inf, and NaN where B is 0
        raise AdapterError(
            f"adapter {name!r}: its scaling (lora_alpha over r) is {scaling:.3g}, beyond float32"
        )
    largest = float(np.abs(w).max()) * abs(scaling)  # a Python float: no overflow
    if largest > bound:
        scaled = f" (times its scaling {scaling:.3g})" if scaling != 1.0 else ""
        raise AdapterError(
            f"adapter {name!r}: tensor {key!r} reaches |w| = {largest:.3g}{scaled}, above the "
            f"bound of {bound:g} ({env.ADAPTER_MAX_ABS_WEIGHT.name}, --max-adapter-weight); "
            "trained LoRA weights stay far below it"
        )
    return w
