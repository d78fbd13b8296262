"""Logit bias and presence, frequency and repetition penalties on a step's logits (OpenAI and
vLLM semantics), in vLLM's order:

* logit_bias (OpenAI): ``logit[t] += bias[t]`` for the listed token ids;
* repetition (HF / vLLM): every token seen in the prompt or the output has its logit divided by
  the penalty when positive, multiplied by it when negative;
* presence / frequency (OpenAI): ``logit[t] -= presence * (count[t] > 0) + frequency * count[t]``,
  with ``count`` over the tokens generated so far;
* min_tokens (vLLM): until that many tokens were generated, EOS and the stop token ids get -inf;
* allowed_token_ids and bad_words (vLLM): ``banned_tokens.py``.

An extreme accepted penalty (1e-300 or 1e300) overflows float32, so reshaped rows are clamped to
the finite range; NaN is left as it is (the sampler never draws it).
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from loraplex.engine.banned_tokens import apply_bans, has_bans
from loraplex.engine.sequence import Sequence


def too_short(seq: Sequence) -> bool:
    """``seq`` has generated fewer tokens than its ``min_tokens``: it may not stop yet."""
    return len(seq.output_token_ids) < seq.params.min_tokens


def has_penalties(seq: Sequence) -> bool:
    p = seq.params
    return (
        p.presence_penalty != 0
        or p.frequency_penalty != 0
        or p.repetition_penalty != 1
        or p.logit_bias is not None
        or too_short(seq)
        or has_bans(seq)
    )


def apply_penalties(
    logits: torch.Tensor, seqs: list[Sequence], eos_ids: Collection[int] = ()
) -> torch.Tensor:
    """logits: [N, V] fp32, row i for ``seqs[i]`` -> reshaped logits (a new tensor; rows of
    sequences without bias or penalties are unchanged).  ``eos_ids``: the model's end tokens."""
    rows = [i for i, s in enumerate(seqs) if has_penalties(s)]
    if not rows:
        return logits
    out = logits.clone()
    vocab, dev = logits.shape[-1], logits.device
    limit = torch.finfo(logits.dtype).max
    for i in rows:
        seq, p = seqs[i], seqs[i].params
        row = out[i]
        if p.logit_bias is not None:
            # The gateway refuses ids outside the vocabulary; the offline API may pass any.
            bias = [(t, b) for t, b in p.logit_bias.items() if t < vocab]
            if bias:
                ids = torch.tensor([t for t, _ in bias], device=dev)
                row[ids] += torch.tensor([b for _, b in bias], device=dev, dtype=row.dtype)
        if p.repetition_penalty != 1:
            seen = torch.zeros(vocab, dtype=torch.bool, device=dev)
            seen[torch.tensor(seq.all_token_ids, device=dev)] = True
            rp = p.repetition_penalty
            row[seen] = torch.where(row[seen] > 0, row[seen] / rp, row[seen] * rp)
        if (p.presence_penalty != 0 or p.frequency_penalty != 0) and seq.output_token_ids:
            counts = torch.bincount(
                torch.tensor(seq.output_token_ids, device=dev), minlength=vocab
            ).to(row.dtype)
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
        row.clamp_(-limit, limit)
        if too_short(seq):
            ends = [t for t in (*p.stop_token_ids, *(() if p.ignore_eos else eos_ids)) if t < vocab]
            if ends:
                row[torch.tensor(ends, device=dev)] = float("-inf")
        apply_bans(row, seq)
    return out
