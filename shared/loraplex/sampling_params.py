"""Per-request sampling parameters (vLLM-style)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature == 0 means greedy.  ``seed`` makes a request's sampling reproducible whatever else
    shares its batch.  ``stop`` strings are cut from the returned text; ``stop_token_ids`` and the
    model's EOS end generation (EOS is ignored when ``ignore_eos``).  ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI, over generated tokens) and ``repetition_penalty`` (vLLM/HF,
    over prompt and generated tokens; 1 = off) reshape the logits before sampling.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    # Report each prompt token's logprob (given the tokens before it) and this many alternatives.
    prompt_logprobs: int | None = None
    # Constrain the output to a JSON schema, regex, choice or grammar (see structured_outputs).
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise InvalidRequestError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {value}")
        rp = self.repetition_penalty
        if not (math.isfinite(rp) and rp > 0):
            raise InvalidRequestError(f"repetition_penalty must be > 0, got {rp}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise InvalidRequestError(f"{name} must be in [0, 20], got {value}")
        if any(s == "" for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
