"""The fake "worker"'s scores (``conftest.FakeScheduler``): logprobs a test can predict per
position, for ``logprobs`` and prompt logprobs."""

from __future__ import annotations

from loraplex.protocol import SubmitRequest
from loraplex.token_logprobs import TokenLogprobs


def fake_logprobs(token_id: int, pos: int, k: int) -> TokenLogprobs:
    """What the fake "worker" scores token ``token_id`` at position ``pos`` with ``k``
    alternatives: at even positions the token is the most likely (rank 1, first of its
    alternatives), at odd ones it is not among them (rank k + pos)."""
    if pos % 2 == 0:
        mine = -0.25 - pos / 64
        top = [(token_id, mine), *(((token_id + j) % 1000, mine - j) for j in range(1, k))]
        return TokenLogprobs(token_id, mine, tuple(top[:k]), 1)
    top = tuple(((token_id + 1 + j) % 1000, -0.5 - j / 8) for j in range(k))  # in the vocabulary
    return TokenLogprobs(token_id, -4.0 - pos / 64, top, k + pos)


def fake_prompt_logprobs(req: SubmitRequest) -> list[TokenLogprobs] | None:
    """A request's prompt logprobs (tokens 1..) as the fake sends them, None unless asked."""
    k = req.sampling.prompt_logprobs
    if k is None:
        return None
    return [fake_logprobs(t, i, k) for i, t in enumerate(req.prompt_token_ids) if i > 0]
