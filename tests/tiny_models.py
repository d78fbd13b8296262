"""Tiny random models with PEFT adapters on disk, and an offline ``LLM`` with them loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loraplex import LLM
from loraplex.tooling.demo import (
    TinyModelSpec,
    write_demo_tokenizer,
    write_random_adapter,
    write_random_model,
)


def write_model_and_adapters(
    root: Path, spec: TinyModelSpec, adapters: Mapping[str, Mapping[str, Any]]
) -> tuple[Path, dict[str, Path]]:
    """``root/model`` (random weights, demo tokenizer) and one adapter per entry at
    ``root/<name>``, each entry being ``write_random_adapter``'s keyword arguments."""
    model = root / "model"
    write_random_model(model, spec)
    write_demo_tokenizer(model, spec.vocab_size)
    paths = {}
    for name, kwargs in adapters.items():
        paths[name] = root / name
        write_random_adapter(paths[name], spec, **kwargs)
    return model, paths


def ranked(adapters: Mapping[str, tuple[int, Sequence[str]]]) -> dict[str, dict[str, Any]]:
    """``{name: (rank, targets)}`` as adapter arguments: alpha 2 x rank, seed = position."""
    return {
        name: {"rank": rank, "alpha": 2 * rank, "targets": targets, "seed": i}
        for i, (name, (rank, targets)) in enumerate(adapters.items())
    }


def llm_with_adapters(model: Path, paths: Mapping[str, Path], **options: Any) -> LLM:
    """``LLM(model, **options)`` with every adapter of ``paths`` registered under its name."""
    llm = LLM(model, **options)
    for name, path in paths.items():
        llm.add_lora(name, path)
    return llm
