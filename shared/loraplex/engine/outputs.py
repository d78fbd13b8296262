"""What an engine step hands back: per-request outputs, and K/V ready for a hand-over."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.engine.logprobs import TokenLogprobs


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    handoff: KVHandoff | None = None  # prefill-only request whose K/V are ready to ship
    logprobs: list[TokenLogprobs] | None = None  # one per new token, when the request asked
    # With the first token, when asked: prompt tokens 1.. (token 0 has no logprob).
    prompt_logprobs: list[TokenLogprobs] | None = None
    # Why the request ended early (finish_reason "error"): its logits were not finite, or the
    # step serving it failed.  Nothing else in the batch is affected.
    error: str | None = None
    # The HTTP-like status of that error: 400 when the request's own adapter produced the
    # non-finite logits (the tenant's input is at fault), 500 for a failed step or base model.
    error_code: int = 500
    # Prompt tokens its prefill took from the prefix cache (Sequence.num_cached_tokens); None
    # when this engine did not prefill it (its K/V were handed over)
    num_cached_tokens: int | None = None
    # Character offset of ``new_text`` in the request's completion text (TokenDelta.text_start).
    text_start: int = 0
    # A resumed request's first output after the resume: the text of the tokens it had generated
    # before (its ``generated``), which the worker replays to the gateway with them.
    resumed_text: str | None = None
    # On a finished request's last output: its whole completion text (TokenDelta.full_text).
    full_text: str | None = None


@dataclass(frozen=True)
class KVHandoff:
    """The exported prompt K/V of a prefill-only request and the first token sampled after it."""

    payload: torch.Tensor  # [layers, 2, blocks, block_size, kv_heads, head_dim]
    first_token: int
    num_tokens: int  # tokens whose K/V the payload holds
    first_logprobs: TokenLogprobs | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None
