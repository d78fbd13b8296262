"""loraplex: multi-tenant LoRA serving.  ``from loraplex import LLM, SamplingParams``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraplex.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "LoRARequest", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from loraplex.llm import LLM
    from loraplex.lora.request import LoRARequest


def __getattr__(name: str) -> Any:
    # LLM pulls in torch; services that only need the protocol stay light.
    if name == "LLM":
        from loraplex.llm import LLM

        return LLM
    if name == "LoRARequest":
        from loraplex.lora.request import LoRARequest

        return LoRARequest
    raise AttributeError(name)
