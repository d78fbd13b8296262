"""LoRA cases: projection groups, the rank and load sweeps, adapter assignment and segments, and
the slot stacks (real rank and padded) that every variant runs on."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch

from loraplex.forward_context import LoraMeta
from loraplex.lora.adapter import LORA_TARGETS
from loraplex.lora.weights import LoraWeights
from loraplex.model.config import ModelConfig

from .config import POPULARITIES, Grid
from .env import Env


@dataclass(frozen=True)
class GroupSpec:
    """Projections sharing one input, called as ``DecoderLayer`` calls ``add_lora``."""

    name: str
    in_features: int
    slices: tuple[tuple[str, int], ...]  # (target, column offset in the group's output)
    outs: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.outs)


def group_specs(cfg: ModelConfig) -> dict[str, GroupSpec]:
    q, kv, h, i = cfg.q_size, cfg.kv_size, cfg.hidden_size, cfg.intermediate_size
    return {
        "qkv": GroupSpec("qkv", h, (("q_proj", 0), ("k_proj", q), ("v_proj", q + kv)), (q, kv, kv)),
        "o": GroupSpec("o", q, (("o_proj", 0),), (h,)),
        "gate_up": GroupSpec("gate_up", h, (("gate_proj", 0), ("up_proj", i)), (i, i)),
        "down": GroupSpec("down", i, (("down_proj", 0),), (h,)),
    }


@dataclass(frozen=True)
class LoraCase:
    sweep: str  # "rank", "load" or "scale" (adapters grow at a fixed batch: Punica's claim)
    mode: str  # "bgmv" (decode rows) or "sgmv" (prefill segments)
    group: str  # qkv | o | gate_up | down | layer (all four, one decoder layer)
    requests: int  # decode rows, or prefill requests
    tokens: int  # tokens per request (1 for decode)
    adapters: int
    popularity: str  # distinct (round robin) | uniform | zipf (i.i.d. draws)
    ranks: tuple[int, ...]  # adapter j has rank ranks[j % len(ranks)]

    @property
    def rank_label(self) -> str:
        return "/".join(map(str, self.ranks))


def load_combos(requests: int, adapters: Sequence[int]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for n in adapters:
        if n <= requests:
            out += [(n, p) for p in (("distinct",) if n == 1 else POPULARITIES)]
    return out


def lora_cases(grid: Grid) -> list[LoraCase]:
    cases = []
    for mode, (req, tok) in (("bgmv", (grid.bgmv_rank_rows, 1)), ("sgmv", grid.sgmv_rank_shape)):
        for g in grid.rank_groups:
            for rk in grid.rank_patterns:
                cases.append(LoraCase("rank", mode, g, req, tok, req, "distinct", rk))
    shapes = [("bgmv", b, 1) for b in grid.bgmv_rows]
    shapes += [("sgmv", r, t) for r, t in grid.sgmv_shapes]
    for mode, req, tok in shapes:
        for n, pop in load_combos(req, grid.adapters):
            cases.append(LoraCase("load", mode, "layer", req, tok, n, pop, grid.load_ranks))
    # Distinct adapters at one batch: 1 (every row the same adapter) up to more slots than rows.
    for n in grid.scale_adapters:
        rows = grid.scale_rows
        cases.append(LoraCase("scale", "bgmv", "layer", rows, 1, n, "distinct", grid.load_ranks))
    return cases


def assign_adapters(n_req: int, n: int, popularity: str, alpha: float, seed: int) -> list[int]:
    """Adapter of every request: round robin (distinct), or i.i.d. uniform / Zipf(alpha) draws."""
    if popularity == "distinct" or n == 1:
        return [i % n for i in range(n_req)]
    probs = torch.ones(n) if popularity == "uniform" else torch.arange(1, n + 1.0) ** -alpha
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n_req, replacement=True, generator=gen).tolist()


def segments_of(slots: list[int], tokens: int) -> list[tuple[int, int, int]]:
    """Prefill rows as the engine packs them (``build_prefill``): requests sorted by slot,
    neighbours with the same slot merged into one segment.  Returns (start, end, slot)."""
    segs: list[tuple[int, int, int]] = []
    for slot in sorted(slots):
        if segs and segs[-1][2] == slot:
            s, e, _ = segs[-1]
            segs[-1] = (s, e + tokens, slot)
        else:
            start = segs[-1][1] if segs else 0
            segs.append((start, start + tokens, slot))
    return segs


@dataclass
class LoraSetup:
    case: LoraCase
    groups: list[GroupSpec]
    weights: LoraWeights  # one layer; slot j holds adapter j at its real rank, zero padding
    padded: LoraWeights  # same tensors, every used slot's rank set to the batch's largest
    meta: LoraMeta
    xs: list[torch.Tensor]
    ys: list[torch.Tensor]
    slot_rank: list[int]
    rows_per_slot: Counter[int]
    rmax: int
    blocks: list[tuple[int, Any]]  # (slot, rows: slice or index tensor) for the per-adapter loop
    gather: SimpleNamespace  # precomputed index tensors of the gather-bmm baseline


def fill_lora(
    w: LoraWeights, slot_ranks: list[int], cfg: ModelConfig, gen: torch.Generator
) -> None:
    """Random A [r, in] ~ N(0, 1/in) and B [out, r] ~ N(0, 1/r) per slot, zero past each real rank."""
    n = len(slot_ranks)
    ranks = torch.tensor(slot_ranks, dtype=torch.int32, device=w.a[LORA_TARGETS[0]].device)
    keep = torch.arange(w.max_rank, device=ranks.device)[None, :] < ranks[:, None]  # [n, R]
    for t in LORA_TARGETS:
        in_f, _ = cfg.module_shape(t)
        a, b = w.a[t][:, :n], w.b[t][:, :n]  # [L, n, R, in], [L, n, out, R]
        a.normal_(0.0, in_f**-0.5, generator=gen).mul_(keep[None, :, :, None])
        b.normal_(0.0, 1.0, generator=gen).mul_(
            keep[None, :, None, :] * ranks[None, :, None, None] ** -0.5
        )
        w.ranks[t][:, :n] = ranks


def padded_view(w: LoraWeights, rmax: int) -> LoraWeights:
    p = copy.copy(w)
    p.ranks = {t: torch.where(r > 0, rmax, 0).to(torch.int32) for t, r in w.ranks.items()}
    return p


def build_setup(case: LoraCase, env: Env, salt: int) -> LoraSetup:
    cfg1 = dataclasses.replace(env.cfg, num_layers=1)
    specs = group_specs(env.cfg)
    groups = list(specs.values()) if case.group == "layer" else [specs[case.group]]
    slots = assign_adapters(
        case.requests, case.adapters, case.popularity, env.args.zipf_alpha, salt
    )
    slot_rank = [case.ranks[j % len(case.ranks)] for j in range(case.adapters)]
    gen = env.gen(salt)
    w = LoraWeights(cfg1, case.adapters, env.grid.max_rank, env.dtype, env.device)
    fill_lora(w, slot_rank, cfg1, gen)
    rmax = max(slot_rank[s] for s in set(slots))
    dev = env.device
    i32 = partial(torch.tensor, dtype=torch.int32, device=dev)
    if case.mode == "bgmv":
        n_rows = case.requests
        meta = LoraMeta(True, False, None, None, i32(slots))
        rows_per_slot = Counter(slots)
        blocks = [
            (s, torch.tensor([i for i, x in enumerate(slots) if x == s], device=dev))
            for s in sorted(rows_per_slot)
        ]
        gather = SimpleNamespace(idx=meta.indices.long())
    else:
        segs = segments_of(slots, case.tokens)
        n_rows = segs[-1][1]
        meta = LoraMeta(
            True,
            True,
            i32([0] + [e for _, e, _ in segs]),
            i32([s for _, _, s in segs]),
            None,
            max_seg_len=max(e - s for s, e, _ in segs),
        )
        rows_per_slot = Counter({s: e - b for b, e, s in segs})
        blocks = [(s, slice(b, e)) for b, e, s in segs]
        gather = sgmv_gather_index(segs, dev)
    xs = [
        torch.randn(n_rows, g.in_features, generator=gen, device=dev).to(env.dtype) for g in groups
    ]
    ys = [torch.randn(n_rows, g.width, generator=gen, device=dev).to(env.dtype) for g in groups]
    return LoraSetup(
        case,
        groups,
        w,
        padded_view(w, rmax),
        meta,
        xs,
        ys,
        slot_rank,
        rows_per_slot,
        rmax,
        blocks,
        gather,
    )


def sgmv_gather_index(segs: list[tuple[int, int, int]], dev: torch.device) -> SimpleNamespace:
    """Rows of every segment padded to the longest one: [G, Lmax] row ids (pad -> row 0) and the
    flat positions of the real rows (in row order, since segments tile 0..T)."""
    lmax = max(e - s for s, e, _ in segs)
    rows = torch.zeros(len(segs), lmax, dtype=torch.long)
    valid = torch.zeros(len(segs), lmax, dtype=torch.bool)
    for g, (s, e, _) in enumerate(segs):
        rows[g, : e - s] = torch.arange(s, e)
        valid[g, : e - s] = True
    return SimpleNamespace(
        rows=rows.to(dev),
        flat=valid.flatten().nonzero().squeeze(1).to(dev),
        slots=torch.tensor([s for _, _, s in segs], device=dev),
    )
