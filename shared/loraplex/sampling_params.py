"""Per-request sampling parameters (vLLM-style), checked with vLLM's ranges."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loraplex.errors import InvalidRequestError
from loraplex.structured_outputs import StructuredOutputsParams

# vLLM's numbers: a temperature below GREEDY_TEMPERATURE is greedy, and a positive one below
# MIN_TEMPERATURE is raised to it (dividing logits by 1e-300 overflows to inf/NaN).
GREEDY_TEMPERATURE = 1e-5
MIN_TEMPERATURE = 1e-2
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit; bounds the per-row work in the sampler
LOGIT_BIAS_RANGE = 100.0  # OpenAI: each bias in [-100, 100]
SEED_RANGE = (-(2**63), 2**64)  # what fits a msgpack integer (the wire)
MAX_ALLOWED_TOKEN_IDS = 1 << 18  # above any vocabulary served; bounds the wire and the mask
MAX_BAD_WORDS, MAX_BAD_WORD_TOKENS = 256, 64  # sequences (spacing variants included), tokens each


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature`` 0 means greedy; a positive temperature below 0.01 is raised to 0.01, as vLLM
    does.  ``top_k`` -1 or 0 is off (0 is stored as -1).  ``min_p`` drops tokens whose
    probability is below ``min_p`` times the most likely token's.  ``logit_bias`` maps token id
    -> bias in [-100, 100], added to the logits (logprobs stay the raw model's).  ``seed`` makes a
    request's sampling reproducible whatever else shares its batch.  ``stop`` strings are cut
    from the returned text; ``stop_token_ids`` and the model's EOS end generation (EOS is ignored
    when ``ignore_eos``).  ``min_tokens`` (vLLM) holds off all three until that many tokens were
    generated: EOS and stop token ids cannot be sampled before, and stop strings are not looked
    for.  ``presence_penalty`` and ``frequency_penalty`` (OpenAI, over generated
    tokens) and ``repetition_penalty`` (vLLM/HF, over prompt and generated tokens; 1 = off)
    reshape the logits before sampling.  ``allowed_token_ids`` (vLLM) are the only tokens that
    may be sampled; ``bad_words_token_ids`` (vLLM's ``bad_words``, tokenized) are sequences
    whose last token is banned wherever the output ends with the rest.  Every error message
    starts with the field's name.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    typical_p: float = 1.0  # TGI/LoRAX, transformers: locally typical sampling (1: off)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # token id -> bias; None when empty.  A dict, as in vLLM, so it is left out of the hash.
    logit_bias: dict[int, float] | None = field(default=None, hash=False)
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    # Report each prompt token's logprob (given the tokens before it) and this many alternatives.
    prompt_logprobs: int | None = None
    # Constrain the output to a JSON schema, regex, choice or grammar (see structured_outputs).
    structured_outputs: StructuredOutputsParams | None = None
    min_tokens: int = 0
    include_stop_str_in_output: bool = False  # vLLM: the stop string that ended it stays in
    allowed_token_ids: tuple[int, ...] | None = None  # vLLM: sample only these (None: any)
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()  # vLLM's bad_words, as token ids

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        t = self.temperature
        if not math.isfinite(t) or t < 0:
            raise InvalidRequestError(f"temperature must be >= 0 and finite, got {t}")
        if 0 < t < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", MIN_TEMPERATURE)
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise InvalidRequestError(f"top_k must be -1 or 0 (off) or >= 1, got {self.top_k}")
        if self.top_k == 0:
            object.__setattr__(self, "top_k", -1)
        if not (math.isfinite(self.min_p) and 0 <= self.min_p <= 1):
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.typical_p) and 0 < self.typical_p <= 1):
            raise InvalidRequestError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise InvalidRequestError(f"seed must be a 64-bit integer, got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {value}")
        rp = self.repetition_penalty
        if not (math.isfinite(rp) and rp > 0):
            raise InvalidRequestError(f"repetition_penalty must be > 0 and finite, got {rp}")
        object.__setattr__(self, "logit_bias", _checked_logit_bias(self.logit_bias))
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise InvalidRequestError(f"{name} must be in [0, 20], got {value}")
        if any(s == "" for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        self._check_token_lists()

    def _check_token_lists(self) -> None:
        allowed = self.allowed_token_ids
        if allowed is not None:
            allowed = tuple(allowed)
            object.__setattr__(self, "allowed_token_ids", allowed)
            if not 0 < len(allowed) <= MAX_ALLOWED_TOKEN_IDS:
                raise InvalidRequestError(
                    f"allowed_token_ids must hold 1 to {MAX_ALLOWED_TOKEN_IDS} token ids"
                )
            if not all(_is_token_id(t) for t in allowed):
                raise InvalidRequestError("allowed_token_ids must be token ids (ints >= 0)")
        words = tuple(tuple(w) for w in self.bad_words_token_ids)
        object.__setattr__(self, "bad_words_token_ids", words)
        if len(words) > MAX_BAD_WORDS:
            raise InvalidRequestError(
                f"bad_words: at most {MAX_BAD_WORDS} word forms, got {len(words)}"
            )
        for w in words:
            if not 0 < len(w) <= MAX_BAD_WORD_TOKENS or not all(_is_token_id(t) for t in w):
                raise InvalidRequestError(
                    f"bad_words: each word must be 1 to {MAX_BAD_WORD_TOKENS} token ids (ints >= 0)"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_logit_bias(bias: dict[int, float] | None) -> dict[int, float] | None:
    """A copy with int keys and float values (None when empty), or InvalidRequestError."""
    if not bias:
        return None
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidRequestError(
            f"logit_bias has {len(bias)} entries, at most {MAX_LOGIT_BIAS_ENTRIES} are allowed"
        )
    out: dict[int, float] = {}
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids (ints >= 0), got {token!r}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequestError(f"logit_bias values must be numbers, got {value!r}")
        if not (math.isfinite(value) and -LOGIT_BIAS_RANGE <= value <= LOGIT_BIAS_RANGE):
            raise InvalidRequestError(
                f"logit_bias values must be in [-100, 100], got {value} for token {token}"
            )
        out[token] = float(value)
    return out
