"""Per-request sampling: greedy, temperature, min-p, top-k, top-p, typical-p, with per-request
seeded generators.

No accepted parameter combination may crash a step (``torch.multinomial`` refuses inf, NaN and
all-zero rows): values are clamped to the finite float32 range after each scaling, -inf and NaN
entries stay "never drawn", and a row with nothing left to draw keeps its argmax.
"""

from __future__ import annotations

import torch

from loraplex.sampling_params import MIN_TEMPERATURE, SamplingParams

F32_MAX = torch.finfo(torch.float32).max
NEG_INF = float("-inf")


def _finite(x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """x clamped to the finite range, with the ``dead`` entries (never drawn) at -inf."""
    return x.clamp(-F32_MAX, F32_MAX).masked_fill(dead, NEG_INF)


def _filter_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` x the top token's (vLLM's min-p)."""
    probs = logits.softmax(dim=-1)
    floor = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < floor, NEG_INF)


def _filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """logits: [N, V] fp32 (already divided by temperature); top_k: [N] (V = off); top_p: [N]."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    drop = ranks[None, :] >= top_k[:, None]
    probs = sorted_logits.masked_fill(drop, NEG_INF).softmax(dim=-1)
    # Drop a token once the mass before it already reaches top_p (the top token always stays).
    before = probs.cumsum(dim=-1) - probs
    drop |= before >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, NEG_INF)
    return torch.full_like(logits, NEG_INF).scatter(-1, order, sorted_logits)


def _filter_typical(logits: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling (Meister et al.; TGI's and transformers' ``typical_p``): keep the
    tokens whose surprisal is closest to the distribution's entropy, fewest first, until their
    probability reaches ``mass``.  logits: [N, V] fp32; mass: [N] in (0, 1] (1: all kept)."""
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp * logp.exp()).nansum(dim=-1, keepdim=True)  # -inf * 0: nan, not counted
    distance = ((-logp) - entropy).abs()
    sorted_distance, order = distance.sort(dim=-1)
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass[:, None]).sum(dim=-1).clamp(max=logits.shape[-1] - 1)
    drop_sorted = sorted_distance > sorted_distance.gather(-1, last[:, None])
    drop_sorted[:, 0] = False  # the most typical token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop & (mass < 1)[:, None], NEG_INF)


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """logits: [N, V] fp32 (after penalties, bias and grammar masks) -> one token id per row.

    A row with a generator draws only from it, so its tokens do not depend on its batch-mates.
    """
    out = logits.nan_to_num(nan=NEG_INF, neginf=NEG_INF).argmax(dim=-1).tolist()
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return out
    dev, vocab = logits.device, logits.shape[-1]
    sub = logits.index_select(0, torch.tensor(rows, device=dev)).float()
    dead = ~(sub > NEG_INF)  # -inf (masked) and NaN
    temps = [min(max(params[i].temperature, MIN_TEMPERATURE), F32_MAX) for i in rows]
    sub = _finite(sub / torch.tensor(temps, device=dev)[:, None], dead)
    min_p = [params[i].min_p for i in rows]
    if any(m > 0 for m in min_p):
        sub = _filter_min_p(sub, torch.tensor(min_p, device=dev))
    top_k = torch.tensor(
        [min(params[i].top_k, vocab) if params[i].top_k > 0 else vocab for i in rows], device=dev
    )
    top_p = torch.tensor([params[i].top_p for i in rows], device=dev)
    if (top_k < vocab).any() or (top_p < 1).any():
        sub = _filter_top_k_top_p(sub, top_k, top_p)
    typical = [params[i].typical_p for i in rows]
    if any(t < 1 for t in typical):
        sub = _filter_typical(sub, torch.tensor(typical, device=dev))
    probs = sub.softmax(dim=-1)
    drawable = (~dead).any(dim=-1).tolist()
    for j, i in enumerate(rows):
        if drawable[j]:
            out[i] = int(torch.multinomial(probs[j], 1, generator=generators[i]).item())
    return out


def position_seed(seed: int, index: int) -> int:
    """The generator seed for token ``index`` of a request seeded with ``seed`` (a 64-bit mix,
    so neighbouring seeds and positions do not give related streams)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) % 2**64
    x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 29)) % 2**63
