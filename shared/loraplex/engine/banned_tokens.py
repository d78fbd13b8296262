"""vLLM's ``allowed_token_ids`` and ``bad_words`` on a step's logits (one row per sequence).

* allowed_token_ids: every other token gets -inf.  Ids outside the model's vocabulary are
  dropped (the gateway refuses them); a list with none inside leaves the row as it is rather than
  leave nothing to sample.
* bad_words (tokenized by the caller, ``bad_words_token_ids``): for each word of n tokens, when
  the output's last n-1 tokens are its first n-1, its last token gets -inf (a one-token word is
  always banned).  This is vLLM's rule: it looks at the generated tokens only.
"""

from __future__ import annotations

import torch

from loraplex.engine.sequence import Sequence


def has_bans(seq: Sequence) -> bool:
    p = seq.params
    return p.allowed_token_ids is not None or bool(p.bad_words_token_ids)


def apply_bans(row: torch.Tensor, seq: Sequence) -> None:
    """row: [V] logits of ``seq``'s next token, masked in place."""
    p, vocab = seq.params, row.shape[-1]
    if p.allowed_token_ids is not None:
        mask = seq.disallowed
        if mask is None or mask.shape[0] != vocab or mask.device != row.device:
            mask = seq.disallowed = _disallowed(p.allowed_token_ids, vocab, row.device)
        row.masked_fill_(mask, float("-inf"))
    if p.bad_words_token_ids:
        banned = [t for t in _banned_next(p.bad_words_token_ids, seq.output_token_ids) if t < vocab]
        if banned:
            row[torch.tensor(banned, device=row.device)] = float("-inf")


def _disallowed(allowed_ids: tuple[int, ...], vocab: int, device: torch.device) -> torch.Tensor:
    """[V] bool: True for the tokens outside ``allowed_ids`` (none when no id is in range)."""
    allowed = [t for t in allowed_ids if t < vocab]
    if not allowed:
        return torch.zeros(vocab, dtype=torch.bool, device=device)
    mask = torch.ones(vocab, dtype=torch.bool, device=device)
    mask[torch.tensor(allowed, device=device)] = False
    return mask


def _banned_next(words: tuple[tuple[int, ...], ...], output: list[int]) -> list[int]:
    """The last tokens of the words whose other tokens end ``output``."""
    out = []
    for word in words:
        prefix = word[:-1]
        if len(prefix) > len(output):
            continue
        if not prefix or tuple(output[len(output) - len(prefix) :]) == prefix:
            out.append(word[-1])
    return out
