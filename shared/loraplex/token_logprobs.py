"""``TokenLogprobs``: one token's logprob and its most likely alternatives (OpenAI ``logprobs``).

Torch-free, so it travels on the wire as it is (``loraplex.protocol`` registers it with the codec)
and the gateway reads it without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first
    # 1 + how many other tokens are at least as likely, as vLLM counts it (its ``rank``, which
    # ``prompt_logprobs`` answers show); None from a peer that does not send it.
    rank: int | None = None
