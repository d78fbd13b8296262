"""``check_adapter_file``: an uploaded adapter validated as a worker will parse it (the same
``tensor_check.walk``), without torch and keeping nothing: one A/B pair in memory at a time,
whatever the file's size.  Adapter registration (adapter-store, gateway) runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraplex.lora.config_check import LORA_TARGETS, parse_config
from loraplex.lora.names import validate_name
from loraplex.lora.tensor_check import open_weights_file, walk
from loraplex.model.config import ModelConfig


@dataclass(frozen=True)
class AdapterSummary:
    """What the store records of a validated adapter file."""

    rank: int
    alpha: float
    targets: tuple[str, ...]


def check_adapter_file(
    name: str,
    config_bytes: bytes,
    weights_path: str | Path,
    model: ModelConfig,
    max_rank: int,
    max_abs_weight: float | None = None,
) -> AdapterSummary:
    """``parse_adapter``'s checks on a weights file, reading one A/B pair at a time; every
    failure is an AdapterError saying why."""
    validate_name(name)
    config = parse_config(name, config_bytes)
    rank, targets = 0, set()
    with open_weights_file(name, weights_path) as source:
        for (_, target), a, _ in walk(name, config, source, model, max_rank, max_abs_weight):
            rank, targets = max(rank, a.shape[0]), targets | {target}
    return AdapterSummary(rank, config.alpha, tuple(t for t in LORA_TARGETS if t in targets))
