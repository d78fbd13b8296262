"""The markdown subsection on attention (the LoRA tables and the decode step are in
``lora_tables``)."""

from __future__ import annotations

import math

from common import markdown_table

from .attention import PREFILL_VARIANTS, AttnRow
from .env import Env
from .fmt import err_flag, fmt_num, fmt_us, fmt_x

TARGET_ENGINE_VS_BEST = 1.5
TARGET_ENGINE_VS_BEFORE = 10.0


def prefill_target_lines(pre: list[AttnRow]) -> list[str]:
    """The prefill targets on the rows that have the engine's time."""
    lines = []
    for r in pre:
        eng = r.times.get("engine")
        if eng is None:
            continue
        best = min(r.times.values())
        ok = "met" if eng <= TARGET_ENGINE_VS_BEST * best else "MISSED"
        line = f"- {r.label}: engine {eng / best:.2f}x the best variant ({ok}, target <= 1.5x)"
        before = r.times.get("seq3d")
        if before is not None:
            ok = "met" if before >= TARGET_ENGINE_VS_BEFORE * eng else "MISSED"
            line += f"; {before / eng:.1f}x faster than before ({ok}, target >= 10x)"
        lines.append(line)
    return lines


def attention_section(pre: list[AttnRow], dec: list[AttnRow], env: Env) -> list[str]:
    names = {
        "seq3d": "per-seq SDPA, 3-D views (before)",
        "twin": "per-seq SDPA, 4-D (twin)",
        "masked": "packed SDPA, block-diag mask",
        "engine": "engine (FlexAttention on CUDA)",
        "flex": "FlexAttention, create_block_mask",
        "varlen": "torch varlen_attn",
        "flash": "flash-attn varlen",
    }
    pre_body = []
    for r in pre:
        cells = []
        for v in PREFILL_VARIANTS:
            t = r.times.get(v)
            cells.append(fmt_us(t) if t is not None else f"— ({r.notes.get(v, 'n/a')})")
        best = min(r.times, key=lambda k: r.times[k]) if r.times else "—"
        tflops = r.flops / r.times[best] / 1e12 if r.times else math.nan
        pre_body.append(
            [r.label, *cells, names.get(best, best), fmt_num(tflops), err_flag(r.errors, env.tol)]
        )
    dec_body = []
    for r in dec:
        floor, _ = env.floor(r.nbytes, r.flops)
        k = r.times.get("kernel", math.nan)
        dense = r.times.get("dense")
        dec_body.append(
            [
                r.label,
                fmt_us(k),
                fmt_us(r.times.get("twin")),
                fmt_us(dense) if dense is not None else f"— ({r.notes.get('dense', 'n/a')})",
                fmt_us(floor),
                fmt_num(r.nbytes / k / 1e9),
                fmt_x(k / floor),
                fmt_x(r.times.get("twin", math.nan) / k),
                err_flag(r.errors, env.tol),
            ]
        )
    cfg = env.cfg
    kernel = "Triton" if env.ops.backend == "triton" else f"{env.ops.backend} (twin)"
    return [
        "### Attention",
        "",
        f"Prefill: {env.grid.prefill_tokens} packed tokens, {cfg.num_heads} query / "
        f"{cfg.num_kv_heads} KV heads of {cfg.head_dim}, causal. *before* = one SDPA per "
        "prompt on 3-D views (the engine's path until FlexAttention: SDPA's math backend on "
        "CUDA); *twin* = `torch_ref.prefill_attention` (one SDPA per prompt on 4-D views, the "
        "CPU path and fallback); *packed* = one SDPA with a block-diagonal mask; *engine* = "
        "`ops.prefill_attention` as the engine calls it (CUDA: one compiled FlexAttention "
        "launch, block mask built once per step, padding and the finite-value copy included); "
        "*FlexAttention, create_block_mask* = the same kernel with torch's own mask builder "
        "(compile not timed); *varlen_attn* = torch's varlen flash entry. Rows *new after "
        "cached* are chunked prefill / prefix-cache hits reading K/V from scattered cache "
        "blocks (twin and engine only). TFLOP/s of the best, causal FLOPs; max err against "
        "the twin.",
        "",
        *prefill_target_lines(pre),
        "",
        markdown_table(
            [
                "prompts",
                *(names[v] + " µs" for v in PREFILL_VARIANTS),
                "best",
                "TFLOP/s",
                "max err",
            ],
            pre_body,
        ),
        "",
        f"Paged decode attention: one query per sequence, blocks of {env.grid.block_size} "
        f"scattered at random; *kernel* = {kernel} `paged_decode_attention`, *twin* = "
        "`torch_ref.paged_decode_attention` (gathers the blocks), *dense* = SDPA over K/V already "
        "contiguous (no paging; equal lengths only). Floor = K/V bytes read once / copy rate.",
        "",
        markdown_table(
            [
                "batch x context",
                "kernel µs",
                "twin µs",
                "dense SDPA µs",
                "floor µs",
                "kernel GB/s",
                "x floor",
                "twin / kernel",
                "max err",
            ],
            dec_body,
        ),
    ]
