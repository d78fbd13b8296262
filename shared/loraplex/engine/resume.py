"""Resuming a request that already generated tokens elsewhere (its worker died mid-stream).

The tokens it generated become its first outputs: they are prefilled with the prompt, and count as
outputs for penalties, ``max_tokens``, stop conditions, its grammar and its seeded generator, which
draws token ``i`` from (seed, i) (``sampler.position_seed``).  So a resumed request continues the
sequence it would have produced without the failure.  Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses

from loraplex.errors import InvalidRequestError
from loraplex.sampling_params import SamplingParams


def resumed_params(params: SamplingParams, generated: list[int], vocab: int) -> SamplingParams:
    """The parameters a request resumes with after ``generated`` tokens (InvalidRequestError
    when they cannot be its outputs).  Prompt logprobs went out with its first token: the
    resumed request does not compute them again (they would also keep it off the prefix cache)."""
    if len(generated) >= params.max_tokens:
        raise InvalidRequestError(
            f"a resumed request has {len(generated)} tokens already; max_tokens is {params.max_tokens}"
        )
    if min(generated) < 0 or max(generated) >= vocab:
        raise InvalidRequestError(f"generated token ids must be in [0, {vocab})")
    if params.prompt_logprobs is None:
        return params
    return dataclasses.replace(params, prompt_logprobs=None)
