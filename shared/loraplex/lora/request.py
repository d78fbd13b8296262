"""vLLM's ``LoRARequest`` for the offline ``LLM``: code written as
``llm.generate(prompts, params, lora_request=LoRARequest("sql", 1, "/adapters/sql"))`` runs
unchanged (``from loraplex.lora.request import LoRARequest``, or ``from loraplex import
LoRARequest``).  The ``LLM`` loads the adapter from ``lora_path`` on first use and keys it by
``lora_name``; ``lora_int_id`` is vLLM's numeric id, kept for its callers, unused here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:  # vLLM's rule: 0 means "no adapter"
            raise ValueError(f"lora_int_id must be > 0, got {self.lora_int_id}")

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path
