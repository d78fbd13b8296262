"""Log-probabilities of sampled tokens and the most likely alternatives (OpenAI ``logprobs``).

Like vLLM's default, they come from the model's raw distribution: ``log_softmax`` of the logits
before penalties, temperature or top-k/top-p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from loraplex.engine.sequence import Sequence
from loraplex.token_logprobs import TokenLogprobs

if TYPE_CHECKING:
    from loraplex.engine.batch import PromptRows

MAX_LOGPROBS = 20  # OpenAI's limit on alternatives per token
PROMPT_LOGITS_ROWS = 1024  # prompt rows turned into [rows, vocab] logits at a time


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
    k = max(seqs[i].params.logprobs or 0 for i in rows)
    scored = _score(lp, [tokens[i] for i in rows], k, with_rank=False)
    for i, s in zip(rows, scored, strict=True):
        out[i] = replace(s, top=s.top[: seqs[i].params.logprobs or 0])
    return out


def _score(
    lp: torch.Tensor, targets: list[int], k: int, with_rank: bool = True
) -> list[TokenLogprobs]:
    """lp: [R, V] log-probabilities; row i scores ``targets[i]`` with ``k`` alternatives, and
    its ``rank`` when ``with_rank`` (only prompt logprobs show it: not paid per decode step)."""
    idx = torch.tensor(targets, device=lp.device).unsqueeze(1)
    chosen_t = lp.gather(1, idx)  # [R, 1]
    # vLLM's rank: the tokens at least as likely as the target, itself included (ties count)
    ranks = (lp >= chosen_t).sum(dim=-1).tolist() if with_rank else [None] * len(targets)
    chosen = chosen_t[:, 0].tolist()
    top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    top_lp_l, top_ids_l = top_lp.tolist(), top_ids.tolist()
    return [
        TokenLogprobs(t, c, tuple(zip(ids, lps, strict=True)), r)
        for t, c, ids, lps, r in zip(targets, chosen, top_ids_l, top_lp_l, ranks, strict=True)
    ]


def compute_prompt_logprobs(
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    prompt_rows: list[PromptRows],
) -> list[tuple[Sequence, list[TokenLogprobs]]]:
    """hidden: [T, hidden] final hidden states of a step; ``compute_logits`` maps [R, hidden] to
    fp32 [R, vocab].  Each ``PromptRows`` gets the logprob of the prompt token after each of its
    rows, with ``prompt_logprobs`` alternatives, computed a slice of rows at a time so a long
    prompt never holds [prompt, vocab] logits at once."""
    out = []
    for pr in prompt_rows:
        k = pr.seq.params.prompt_logprobs or 0
        targets = pr.targets
        scored: list[TokenLogprobs] = []
        for lo in range(0, pr.count, PROMPT_LOGITS_ROWS):
            hi = min(pr.count, lo + PROMPT_LOGITS_ROWS)
            rows = hidden[pr.row + lo : pr.row + hi]
            scored += _score(compute_logits(rows).log_softmax(dim=-1), targets[lo:hi], k)
        out.append((pr.seq, scored))
    return out
