"""``adapter_config.json`` of a PEFT LoRA adapter: every field loraplex reads, type-checked, with an
``AdapterError`` naming the field; and the module matching of ``target_modules``,
``layers_to_transform``, ``rank_pattern`` and ``alpha_pattern`` the way PEFT does it.

Tenants write these files, so nothing here may raise anything but ``AdapterError`` (a 400), and
their regular expressions go through ``patterns`` (bounded time).  No torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import regex

from loraplex.errors import AdapterError
from loraplex.lora.names import CONFIG_FILE
from loraplex.lora.patterns import MAX_PATTERN_CHARS, MAX_PATTERNS, MatchBudget, compile_pattern

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output head
# PEFT's rank/alpha pattern match: the key matches the module name or a dotted suffix of it
_PATTERN_TEMPLATE = r"(.*\.)?({})$"
# modules of a Llama-family decoder LoRA cannot adapt here (PEFT would adapt or refuse them)
_OTHER_GLOBAL = ("model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head")  # fmt: skip
_OTHER_PER_LAYER = ("", ".self_attn", ".mlp", ".mlp.act_fn", ".input_layernorm", ".post_attention_layernorm")  # fmt: skip


def module_name(layer: int, target: str) -> str:
    """The module's name in the base model, as PEFT matches it: model.layers.3.mlp.up_proj."""
    return f"model.layers.{layer}.{'mlp' if target in _MLP else 'self_attn'}.{target}"


@dataclass(frozen=True)
class LoraConfig:
    """The checked fields; patterns compiled (``(key, pattern, value)`` in the file's order)."""

    r: int | None  # None: not given; the tensors' rank is used
    alpha: float
    use_rslora: bool
    rank_pattern: tuple[tuple[str, regex.Pattern, int], ...] = ()
    alpha_pattern: tuple[tuple[str, regex.Pattern, float], ...] = ()
    target_list: frozenset[str] | None = None  # a list of names (PEFT: name or dotted suffix)
    target_regex: regex.Pattern | None = None  # a string: fullmatch against the module name
    layers: frozenset[int] | None = None  # layers_to_transform

    def rank_for(self, module: str, budget: MatchBudget) -> int | None:
        return next((v for _, p, v in self.rank_pattern if budget.match(p, module)), self.r)

    def alpha_for(self, module: str, budget: MatchBudget) -> float:
        return next((v for _, p, v in self.alpha_pattern if budget.match(p, module)), self.alpha)

    def adapts(self, module: str, budget: MatchBudget) -> bool:
        """Whether PEFT would put a LoRA layer on ``module`` (``target_modules`` absent: yes)."""
        if self.target_regex is not None:
            return budget.fullmatch(self.target_regex, module)
        if self.target_list is not None:
            return any(s in self.target_list for s in _suffixes(module))
        return True


def parse_config(adapter: str, config_bytes: bytes) -> LoraConfig:
    try:
        config = json.loads(config_bytes)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too deep, a 5,000-digit int
        raise AdapterError(
            f"adapter {adapter!r}: {CONFIG_FILE} is not valid JSON ({str(e)[:200]})"
        ) from e
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {adapter!r}: {CONFIG_FILE} must be a JSON object")
    _check_unsupported(adapter, config)
    field = _Fields(adapter, config)
    if field.boolean("use_dora"):
        raise AdapterError(f"adapter {adapter!r}: DoRA adapters are not supported")
    target_list, target_regex = field.targets()
    return LoraConfig(
        r=field.positive_int("r", config["r"]) if "r" in config else None,
        alpha=field.number("lora_alpha", config["lora_alpha"]) if "lora_alpha" in config else 8.0,
        use_rslora=field.boolean("use_rslora"),
        rank_pattern=field.patterns("rank_pattern", field.positive_int),
        alpha_pattern=field.patterns("alpha_pattern", field.number),
        target_list=target_list,
        target_regex=target_regex,
        layers=field.layers(),
    )


def check_targets(adapter: str, cfg: LoraConfig, num_layers: int, budget: MatchBudget) -> None:
    """Every name ``target_modules`` lists (or its regex matches) is a projection of the base
    model that LoRA can adapt here: PEFT refuses targets it cannot find or cannot adapt."""
    ours = [module_name(layer, t) for layer in range(num_layers) for t in LORA_TARGETS]
    others = [*_OTHER_GLOBAL]
    others += [f"model.layers.{layer}{m}" for layer in range(num_layers) for m in _OTHER_PER_LAYER]
    if cfg.target_list is not None:
        ok = {s for m in ours for s in _suffixes(m)}
        known = {s for m in others for s in _suffixes(m)}
        for entry in sorted(cfg.target_list):
            if entry not in ok:
                raise _field_error(
                    adapter, "target_modules", f"names {_unsupported(entry, entry in known)}"
                )
    elif cfg.target_regex is not None:
        hit = next((m for m in others if budget.fullmatch(cfg.target_regex, m)), None)
        if hit is not None:
            raise _field_error(adapter, "target_modules", f"matches {_unsupported(hit, True)}")
        if not any(budget.fullmatch(cfg.target_regex, m) for m in ours):
            raise _field_error(adapter, "target_modules", "matches no module of the base model")


def _unsupported(entry: str, known: bool) -> str:
    if known:
        return f"{entry!r}, which LoRA cannot adapt here (only {', '.join(LORA_TARGETS)})"
    return f"{entry!r}, which is not a module of the base model"


def _suffixes(module: str) -> list[str]:
    """``a.b.c`` -> ``a.b.c``, ``b.c``, ``c``: the names PEFT's target list matches it by."""
    parts = module.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _field_error(adapter: str, field: str, what: str) -> AdapterError:
    return AdapterError(f"adapter {adapter!r}: {CONFIG_FILE} field {field!r} {what}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_unsupported(adapter: str, config: dict[str, Any]) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(
            f"adapter {adapter!r}: peft_type {_show(config.get('peft_type'))} is not LORA"
        )
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"adapter {adapter!r}: bias={_show(config.get('bias'))} is not supported (need 'none')"
        )
    for field, what in (
        ("modules_to_save", "is not supported (fully trained modules are not served)"),
        ("fan_in_fan_out", "true is not supported (the projections are nn.Linear)"),
        ("target_parameters", "is not supported (only target_modules)"),
    ):
        if config.get(field):
            raise _field_error(adapter, field, f"{_show(config[field])} {what}")


def finite_float(value: int | float) -> bool:
    """Whether ``value`` is a finite float, or an int a float can hold (10**400 is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class _Fields:
    """Typed reads of the config's fields; each failure names its field."""

    def __init__(self, adapter: str, config: dict[str, Any]) -> None:
        self.adapter = adapter
        self.config = config

    def _error(self, field: str, what: str) -> AdapterError:
        return _field_error(self.adapter, field, what)

    def positive_int(self, field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._error(field, f"must be a positive integer, got {_show(value)}")
        return value

    def number(self, field: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not finite_float(value):
            raise self._error(field, f"must be a finite number, got {_show(value)}")
        return float(value)

    def boolean(self, field: str) -> bool:
        value = self.config.get(field)
        if value is None:  # absent or null: PEFT's default, false
            return False
        if not isinstance(value, bool):
            raise self._error(field, f"must be true or false, got {_show(value)}")
        return value

    def patterns(self, field: str, check: Any) -> tuple[tuple[str, regex.Pattern, Any], ...]:
        value = self.config.get(field)
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self._error(field, f"must be an object of pattern -> value, got {_show(value)}")
        if len(value) > MAX_PATTERNS:
            raise self._error(field, f"has more than {MAX_PATTERNS} entries")
        out = []
        for key, v in value.items():
            pattern = compile_pattern(self.adapter, field, key, _PATTERN_TEMPLATE)
            out.append((key, pattern, check(f"{field}[{key[:64]!r}]", v)))
        return tuple(out)

    def targets(self) -> tuple[frozenset[str] | None, regex.Pattern | None]:
        value = self.config.get("target_modules")
        if value is None:
            return None, None
        if value == ALL_LINEAR:
            return frozenset(LORA_TARGETS), None
        if isinstance(value, str):
            return None, compile_pattern(self.adapter, "target_modules", value)
        if not isinstance(value, list) or not value:
            raise self._error("target_modules", f"must be a non-empty list of module names or a regular expression, got {_show(value)}")  # fmt: skip
        if len(value) > MAX_PATTERNS:
            raise self._error("target_modules", f"has more than {MAX_PATTERNS} entries")
        for v in value:
            if not isinstance(v, str) or not v or len(v) > MAX_PATTERN_CHARS:
                raise self._error("target_modules", f"entry {_show(v)} is not a module name")
        return frozenset(value), None

    def layers(self) -> frozenset[int] | None:
        value = self.config.get("layers_to_transform")
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise self._error("layers_to_transform", f"must be a layer index or a list of them, got {_show(value)}")  # fmt: skip
        return frozenset(items)
