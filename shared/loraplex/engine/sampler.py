"""Per-request sampling: greedy, temperature, top-k, top-p, with per-request seeded generators."""

from __future__ import annotations

import torch

from loraplex.sampling_params import SamplingParams


def _filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """logits: [N, V] fp32 (already divided by temperature); top_k: [N] (V = off); top_p: [N]."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    drop = ranks[None, :] >= top_k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # Drop a token once the mass before it already reaches top_p (the top token always stays).
    before = probs.cumsum(dim=-1) - probs
    drop |= before >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """logits: [N, V] fp32 -> one token id per row.

    A row with a generator draws only from it, so its tokens do not depend on its batch-mates.
    """
    out = logits.argmax(dim=-1).tolist()
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return out
    idx = torch.tensor(rows, device=logits.device)
    sub = (
        logits[idx]
        / torch.tensor([params[i].temperature for i in rows], device=logits.device)[:, None]
    )
    vocab = logits.shape[-1]
    top_k = torch.tensor(
        [params[i].top_k if params[i].top_k > 0 else vocab for i in rows], device=logits.device
    )
    top_p = torch.tensor([params[i].top_p for i in rows], device=logits.device)
    if (top_k < vocab).any() or (top_p < 1).any():
        sub = _filter_top_k_top_p(sub, top_k, top_p)
    probs = sub.softmax(dim=-1)
    for j, i in enumerate(rows):
        out[i] = int(torch.multinomial(probs[j], 1, generator=generators[i]).item())
    return out


def position_seed(seed: int, index: int) -> int:
    """The generator seed for token ``index`` of a request seeded with ``seed`` (a 64-bit mix,
    so neighbouring seeds and positions do not give related streams)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) % 2**64
    x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 29)) % 2**63
