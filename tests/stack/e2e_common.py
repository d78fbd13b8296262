"""Shared by the end-to-end tests on the disaggregated stack."""

from __future__ import annotations

from pathlib import Path

from loraplex import LLM
from loraplex.tooling.launcher import Stack

PROMPTS = [[5, 6, 7, 8, 9, 10], [100, 200, 300], [42] * 11, [7, 8], [300, 301, 302, 303], [9] * 5]


def offline_llm(stack: Stack) -> LLM:
    """The offline engine on the stack's model with its adapters: what the stack must match."""
    llm = LLM(Path(stack.urls["model_dir"]), dtype="float32", device="cpu", max_loras=8)
    for a in stack.adapters:  # type: ignore[attr-defined]
        llm.add_lora(a.name, a.path)
    return llm
