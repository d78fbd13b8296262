"""Attention: prefill (per-sequence SDPA vs packed varlen alternatives) and paged decode
attention (kernel vs torch twin vs dense SDPA)."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import torch
import torch.nn.functional as F

from loraplex.kernels import torch_ref

from .config import Grid, log
from .env import Env
from .fmt import fmt_us
from .lora_variants import rel_err


@dataclass
class AttnRow:
    label: str
    tokens: int
    flops: float
    nbytes: float
    times: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def mixed_lengths(total: int, lo: int, hi: int, seed: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while sum(out) < total:
        out.append(min(int(torch.randint(lo, hi + 1, (1,), generator=gen)), total - sum(out)))
    return tuple(out)


def prefill_cases(grid: Grid, seed: int) -> list[tuple[str, tuple[int, ...]]]:
    cases = [
        (f"{grid.prefill_tokens // n} x {n}", (n,) * (grid.prefill_tokens // n))
        for n in grid.prefill_equal
    ]
    lens = mixed_lengths(grid.prefill_tokens, *grid.prefill_piece, seed)
    cases.append((f"{len(lens)} mixed {min(lens)}..{max(lens)}", lens))
    return cases


def per_seq_sdpa_3d(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> torch.Tensor:
    """The engine's prefill before FlexAttention: one SDPA per prompt on 3-D [H, L, D] views,
    which no fused CUDA backend accepts (SDPA runs its math path)."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    for s, e in zip(cu[:-1], cu[1:], strict=True):
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1),
            k[s:e].transpose(0, 1),
            v[s:e].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=gqa,
        )
        out[s:e] = o.transpose(0, 1)
    return out


def packed_masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_id: torch.Tensor, scale: float
) -> torch.Tensor:
    """One SDPA over the packed batch with a block-diagonal causal mask (built per call)."""
    pos = torch.arange(q.shape[0], device=q.device)
    mask = (seq_id[:, None] == seq_id[None, :]) & (pos[None, :] <= pos[:, None])
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return o[0].transpose(0, 1)


@cache
def compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def flex_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_id: torch.Tensor, scale: float
) -> Callable[[], torch.Tensor]:
    """FlexAttention (compiled) with a document-causal block mask from ``create_block_mask``,
    built outside the timing: the reference the engine's path is held to."""
    from torch.nn.attention.flex_attention import create_block_mask

    def doc_causal(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        return (seq_id[qi] == seq_id[ki]) & (ki <= qi)

    t = q.shape[0]
    mask = create_block_mask(doc_causal, None, None, t, t, device=q.device)
    qq, kk, vv = (x.transpose(0, 1)[None] for x in (q, k, v))
    flex, gqa = compiled_flex(), q.shape[1] != k.shape[1]
    return lambda: flex(qq, kk, vv, block_mask=mask, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)


def varlen_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> Callable[[], torch.Tensor] | str:
    """torch's own varlen entry (``torch.nn.attention.varlen.varlen_attn``), causal; without
    ``enable_gqa`` (torch 2.11) K/V heads are repeated first, outside the timing."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return f"not in torch {torch.__version__}"
    gqa = q.shape[1] != k.shape[1]
    kwargs: dict[str, Any] = {}
    if gqa and "enable_gqa" in inspect.signature(varlen_attn).parameters:
        kwargs["enable_gqa"] = True
    elif gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=q.device)
    lmax = max(e - s for s, e in zip(cu[:-1], cu[1:], strict=True))
    return lambda: varlen_attn(
        q, k, v, cu_t, cu_t, lmax, lmax, scale=scale, window_size=(-1, 0), **kwargs
    )


def flash_varlen_variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> Callable[[], torch.Tensor] | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    cu_t = torch.tensor(cu, dtype=torch.int32, device=q.device)
    lmax = max(e - s for s, e in zip(cu[:-1], cu[1:], strict=True))
    return lambda: flash_attn_varlen_func(
        q, k, v, cu_t, cu_t, lmax, lmax, softmax_scale=scale, causal=True
    )


PREFILL_VARIANTS = ("seq3d", "twin", "masked", "engine", "flex", "varlen", "flash")


def prefill_variants(
    env: Env, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    lens = torch.tensor([e - s for s, e in zip(cu[:-1], cu[1:], strict=True)], device=q.device)
    seq_id = torch.repeat_interleave(torch.arange(len(lens), device=q.device), lens)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "twin": partial(torch_ref.prefill_attention, q, k, v, cu, scale),
        "seq3d": partial(per_seq_sdpa_3d, q, k, v, cu, scale),
        "masked": partial(packed_masked_sdpa, q, k, v, seq_id, scale),
        "engine": partial(env.ops.prefill_attention, q, k, v, cu, scale),
    }
    notes: dict[str, str] = {}
    if env.device.type != "cuda":
        notes["flex"] = notes["varlen"] = notes["flash"] = "GPU only"
        return fns, notes
    if env.args.flex:
        try:
            fns["flex"] = flex_variant(q, k, v, seq_id, scale)
        except Exception as e:  # noqa: BLE001
            notes["flex"] = f"{type(e).__name__}: {str(e)[:100]}"
    else:
        notes["flex"] = "--no-flex"
    varlen = varlen_variant(q, k, v, cu, scale)
    if isinstance(varlen, str):
        notes["varlen"] = varlen
    else:
        fns["varlen"] = varlen
    flash = flash_varlen_variant(q, k, v, cu, scale)
    if flash is None:
        notes["flash"] = "flash_attn not installed"
    else:
        fns["flash"] = flash
    return fns, notes


def measure_variants(
    env: Env, row: AttnRow, fns: dict[str, Callable[[], torch.Tensor]], kind: str
) -> None:
    """Check every variant against the twin, then time it; a failing one gets a note."""
    ref = fns["twin"]().float()
    for name, fn in fns.items():
        try:
            row.errors[name] = rel_err(fn().float(), ref)
            row.times[name] = env.timer.time(fn).seconds
        except Exception as e:  # noqa: BLE001
            row.notes[name] = f"{type(e).__name__}: {str(e)[:100]}"
            log(f"    {kind} {name} failed: {row.notes[name]}")
    log(
        f"  {kind} attn {row.label}: " + ", ".join(f"{k} {fmt_us(x)}" for k, x in row.times.items())
    )


def _qkv(env: Env, t: int, gen: torch.Generator) -> list[torch.Tensor]:
    cfg = env.cfg
    return [
        torch.randn(t, n, cfg.head_dim, generator=gen, device=env.device).to(env.dtype)
        for n in (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads)
    ]


def bench_prefill_attention(env: Env) -> list[AttnRow]:
    cfg, rows = env.cfg, []
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    scale = d**-0.5
    for label, lens in prefill_cases(env.grid, env.args.seed):
        t = sum(lens)
        q, k, v = _qkv(env, t, env.gen(21))
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        flops = sum(4.0 * h * d * n * (n + 1) / 2 for n in lens)
        row = AttnRow(label, t, flops, env.elem * t * d * (2 * h + 2 * kvh))
        fns, row.notes = prefill_variants(env, q, k, v, cu, scale)
        measure_variants(env, row, fns, "prefill")
        rows.append(row)
    rows += [paged_row(env, *case) for case in env.grid.prefill_paged]
    return rows


def paged_row(env: Env, n: int, prefix: int, new: int) -> AttnRow:
    """Chunked prefill / prefix-cache hits: ``n`` prompts of ``new`` tokens after ``prefix``
    cached ones, every context token stored at scattered cache blocks.  *twin* = one SDPA per
    prompt over its gathered context; *engine* = the engine's path (CUDA: FlexAttention)."""
    cfg, bs = env.cfg, env.grid.block_size
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    ctx, gen = prefix + new, env.gen(41)
    per_seq = -(-ctx // bs)
    order = torch.randperm(n * per_seq, generator=torch.Generator().manual_seed(5))
    tables = order.view(n, per_seq).to(torch.int32)
    kc = torch.randn(n * per_seq, bs, kvh, d, generator=gen, device=env.device).to(env.dtype)
    vc = torch.randn(n * per_seq, bs, kvh, d, generator=gen, device=env.device).to(env.dtype)
    q = _qkv(env, n * new, gen)[0]
    pos = torch.arange(prefix, ctx)
    slots = (tables.long()[:, pos // bs] * bs + pos % bs).flatten().to(env.device)
    k, v = (c.view(-1, kvh, d)[slots] for c in (kc, vc))
    cu, prefixes, bt = [i * new for i in range(n + 1)], [prefix] * n, tables.to(env.device)
    args = (q, k, v, kc, vc, cu, prefixes, bt, d**-0.5)
    flops = 4.0 * h * d * n * sum(prefix + j + 1 for j in range(new))
    nbytes = env.elem * d * (2 * n * new * h + 2 * n * ctx * kvh)
    row = AttnRow(f"{n} x {new} new after {prefix} cached", n * new, flops, nbytes)
    fns = {
        "twin": partial(torch_ref.prefill_attention_paged, *args),
        "engine": partial(env.ops.prefill_attention_paged, *args),
    }
    row.notes = {v: "fresh prompts only" for v in PREFILL_VARIANTS if v not in fns}
    measure_variants(env, row, fns, "prefill (paged)")
    return row


def decode_attn_case(env: Env, batch: int, ctx: int) -> tuple[str, list[int]]:
    if ctx:
        return f"{batch} x {ctx}", [ctx] * batch
    hi = env.grid.decode_attn_max_ctx
    gen = torch.Generator().manual_seed(env.args.seed + batch)
    lens = torch.randint(env.grid.block_size, hi + 1, (batch,), generator=gen).tolist()
    return f"{batch} x mixed {min(lens)}..{max(lens)}", lens


def dense_decode_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """q: [B, H, D]; k, v: [B, KVH, L, D] contiguous (no paging) -> [B, H, D]."""
    o = F.scaled_dot_product_attention(
        q[:, :, None], k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return o.squeeze(2)


def bench_decode_attention(env: Env) -> list[AttnRow]:
    cfg, bs, rows = env.cfg, env.grid.block_size, []
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    scale = d**-0.5
    for batch, ctx in env.grid.decode_attn:
        label, lens = decode_attn_case(env, batch, ctx)
        gen, dev = env.gen(31), env.device
        per_seq = [-(-n // bs) for n in lens]
        nblocks = sum(per_seq) + 1
        k_cache, v_cache = (
            torch.randn(nblocks, bs, kvh, d, generator=gen, device=dev).to(env.dtype)
            for _ in range(2)
        )
        perm = (
            torch.randperm(nblocks - 1, generator=torch.Generator().manual_seed(batch)) + 1
        ).tolist()
        tables = torch.zeros(batch, max(per_seq), dtype=torch.int32)
        at = 0
        for i, n in enumerate(per_seq):
            tables[i, :n] = torch.tensor(perm[at : at + n])
            at += n
        tables, lens_t = tables.to(dev), torch.tensor(lens, dtype=torch.int32, device=dev)
        q = torch.randn(batch, h, d, generator=gen, device=dev).to(env.dtype)
        kv_bytes = env.elem * sum(lens) * kvh * d * 2
        row = AttnRow(
            label, batch, 4.0 * h * d * sum(lens), kv_bytes + env.elem * 2 * batch * h * d
        )
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "kernel": partial(
                env.ops.paged_decode_attention, q, k_cache, v_cache, tables, lens_t, scale
            ),
            "twin": partial(
                torch_ref.paged_decode_attention, q, k_cache, v_cache, tables, lens_t, scale
            ),
        }
        if len(set(lens)) == 1:
            n = lens[0]
            kd, vd = (
                c[tables.long()].flatten(1, 2)[:, :n].transpose(1, 2).contiguous()
                for c in (k_cache, v_cache)
            )
            fns["dense"] = partial(dense_decode_sdpa, q, kd, vd, scale)
        else:
            row.notes["dense"] = "mixed lengths"
        measure_variants(env, row, fns, "decode")
        rows.append(row)
    return rows
