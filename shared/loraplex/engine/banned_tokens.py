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
        if seq.bad_word_index is None:
            seq.bad_word_index = prefix_index(p.bad_words_token_ids)
        banned = [t for t in banned_next(seq.bad_word_index, seq.output_token_ids) if t < vocab]
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


def prefix_index(
    words: tuple[tuple[int, ...], ...],
) -> dict[int, dict[tuple[int, ...], list[int]]]:
    """The words by prefix length, then prefix: a step looks up each length once (at most 64)
    instead of comparing every word (up to 256)."""
    index: dict[int, dict[tuple[int, ...], list[int]]] = {}
    for word in words:
        index.setdefault(len(word) - 1, {}).setdefault(word[:-1], []).append(word[-1])
    return index


def banned_next(index: dict[int, dict[tuple[int, ...], list[int]]], output: list[int]) -> list[int]:
    """The last tokens of the words whose other tokens end ``output``."""
    out: list[int] = []
    for n, by_prefix in index.items():
        if n <= len(output):
            out += by_prefix.get(tuple(output[len(output) - n :]), ())
    return out
