"""Log-probabilities of sampled tokens and the most likely alternatives (OpenAI ``logprobs``).

Like vLLM's default, they come from the model's raw distribution: ``log_softmax`` of the logits
before penalties, temperature or top-k/top-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.engine.sequence import Sequence

MAX_LOGPROBS = 20  # OpenAI's limit on alternatives per token


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


def compute_logprobs(
    logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]
) -> list[TokenLogprobs | None]:
    """logits: [N, V] fp32 (raw); row i sampled ``tokens[i]`` for ``seqs[i]``.  None for rows
    whose request did not ask for logprobs."""
    rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(seqs)
    if not rows:
        return out
    idx = torch.tensor(rows, device=logits.device)
    lp = logits.index_select(0, idx).float().log_softmax(dim=-1)  # [R, V]
    chosen = lp.gather(1, torch.tensor([[tokens[i]] for i in rows], device=logits.device))
    k = max(seqs[i].params.logprobs or 0 for i in rows)
    top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    chosen_l, top_lp_l, top_ids_l = chosen[:, 0].tolist(), top_lp.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        n = seqs[i].params.logprobs or 0
        top = tuple(zip(top_ids_l[j][:n], top_lp_l[j][:n], strict=True))
        out[i] = TokenLogprobs(tokens[i], chosen_l[j], top)
    return out
