"""The markdown subsections: LoRA kernel tables, the decode step, attention."""

from __future__ import annotations

import math

from common import markdown_table

from .attention import PREFILL_VARIANTS, AttnRow
from .config import TARGET_FLOOR_X, TARGET_OVERHEAD
from .decode_step import StepResult
from .env import Env
from .fmt import err_flag, fmt_num, fmt_us, fmt_x
from .lora_cases import LoraCase
from .lora_variants import LoraRow

LORA_HEADERS = [
    "real rank µs",
    "padded (same kernel) µs",
    "gather-bmm (padded) µs",
    "per-adapter loop µs",
    "floor µs",
    "GB/s",
    "x floor",
    "padded / real",
    "max err",
]


def lora_cells(r: LoraRow, env: Env) -> list[str]:
    t = r.times
    real = t.get("real", math.nan)
    gbs = r.nbytes / real / 1e9 if math.isfinite(real) else math.nan
    mark = "" if r.x_floor <= TARGET_FLOOR_X else " ✗"
    floor = fmt_us(r.floor_s) + (" (math)" if r.bound == "math" else "")
    graphs = "" if all(h != "eager" for h in r.how.values()) or env.smoke else " (some eager)"
    return [
        fmt_us(t.get("real")) + graphs,
        fmt_us(t.get("padded")),
        fmt_us(t.get("gather")),
        fmt_us(t.get("loop")),
        floor,
        fmt_num(gbs),
        fmt_x(r.x_floor) + (mark if math.isfinite(r.x_floor) else ""),
        fmt_x(t.get("padded", math.nan) / real),
        err_flag(r.errors, env.tol),
    ]


def shape_label(c: LoraCase) -> str:
    return f"{c.requests} rows" if c.mode == "bgmv" else f"{c.requests} x {c.tokens} tok"


def lora_rank_table(rows: list[LoraRow], mode: str, env: Env) -> str:
    sel = [r for r in rows if r.case.sweep == "rank" and r.case.mode == mode]
    body = [[r.case.group, r.case.rank_label, *lora_cells(r, env)] for r in sel]
    return markdown_table(["projections", "ranks", *LORA_HEADERS], body)


def lora_load_table(rows: list[LoraRow], mode: str, env: Env) -> str:
    sel = [r for r in rows if r.case.sweep == "load" and r.case.mode == mode]
    body = [
        [
            shape_label(r.case),
            f"{r.used_adapters}/{r.case.adapters}",
            r.case.popularity,
            str(r.segments),
            *lora_cells(r, env),
        ]
        for r in sel
    ]
    seg = "adapter groups" if mode == "bgmv" else "segments"
    return markdown_table(["batch", "adapters used/n", "popularity", seg, *LORA_HEADERS], body)


def lora_section(rows: list[LoraRow], env: Env) -> list[str]:
    g = env.grid
    req, tok = g.sgmv_rank_shape
    words = (
        "projections: qkv = q|k|v fused (3 slices), o, gate_up = gate|up fused, down, layer = all "
        "four calls of one decoder layer"
    )
    out = [
        "### Multi-LoRA kernels (SGMV / BGMV)",
        "",
        f"Slots stored at rank {g.max_rank} (the engine's `max_lora_rank`); each adapter's real "
        'rank in `ranks` ("8/16/64": adapter *j* has the *j* mod 3-th). Columns: **real rank** = '
        "the engine's `add_lora` (fused Triton SGMV/BGMV, each adapter at its rank); **padded** = "
        "the same kernels with every used slot's rank set to the batch's largest (vLLM pads to "
        "`--max-lora-rank`, so it does no better); **gather-bmm** = torch gather of the padded "
        "weights per row (BGMV) or per segment, rows padded to the longest segment (SGMV), then "
        "`bmm`; **per-adapter loop** = rows grouped by adapter, `(x_g @ A^T) @ B^T` at the real "
        "rank. **floor** = bytes (x read, y read + written, real-rank A and B of the adapters "
        'used) / copy rate, or FLOPs / matmul rate if larger ("math"); **GB/s** = those bytes / '
        f"real-rank time; ✗ = more than {TARGET_FLOOR_X:g}x the floor. Every variant's delta is "
        "checked against the torch twins in fp32 (max err = relative L2 error).",
        "",
        f"BGMV (decode), rank sweep: {g.bgmv_rank_rows} rows, {g.bgmv_rank_rows} distinct "
        f"adapters; {words}.",
        "",
        lora_rank_table(rows, "bgmv", env),
        "",
        f"SGMV (prefill), rank sweep: {req} requests x {tok} tokens, {req} distinct adapters "
        "(one segment each).",
        "",
        lora_rank_table(rows, "sgmv", env),
        "",
        f"BGMV (decode), batch / adapters / popularity, one decoder layer, ranks "
        f"{'/'.join(map(str, g.load_ranks))}: *distinct* = round robin, *uniform* / *zipf* = "
        f"i.i.d. draws (Zipf exponent {env.args.zipf_alpha:g}).",
        "",
        lora_load_table(rows, "bgmv", env),
        "",
        "SGMV (prefill), requests x tokens, one decoder layer (requests sorted by adapter and "
        "merged into segments, as `build_prefill` does).",
        "",
        lora_load_table(rows, "sgmv", env),
    ]
    return out


def decode_section(res: StepResult, env: Env) -> list[str]:
    def overhead(base: float, lora: float) -> str:
        if not (math.isfinite(base) and math.isfinite(lora)):
            return "—"
        ov = lora / base - 1
        return f"{ov * 100:+.1f}% " + ("(met)" if ov < TARGET_OVERHEAD else "(MISSED)")

    def tok_s(t: float) -> str:
        return f"{res.batch / t:,.0f}" if math.isfinite(t) else "—"

    body = [
        [
            "eager (host time included, synced per step)",
            f"{res.eager_base * 1e3:.2f}",
            f"{res.eager_lora * 1e3:.2f}",
            overhead(res.eager_base, res.eager_lora),
            f"{tok_s(res.eager_base)} / {tok_s(res.eager_lora)}",
        ],
        [
            "CUDA graph replay" + (f" ({res.graph_note})" if res.graph_note else ""),
            f"{res.graph_base * 1e3:.2f}" if math.isfinite(res.graph_base) else "—",
            f"{res.graph_lora * 1e3:.2f}" if math.isfinite(res.graph_lora) else "—",
            overhead(res.graph_base, res.graph_lora),
            f"{tok_s(res.graph_base)} / {tok_s(res.graph_lora)}",
        ],
        [
            "engine: `DecodeGraphRunner` copy-in + replay (host time included, synced per step)"
            + ("" if res.engine_capture_s > 0 else " (static buffers, no capture: CPU)"),
            f"{res.engine_base * 1e3:.2f}" if math.isfinite(res.engine_base) else "—",
            f"{res.engine_lora * 1e3:.2f}" if math.isfinite(res.engine_lora) else "—",
            overhead(res.engine_base, res.engine_lora),
            f"{tok_s(res.engine_base)} / {tok_s(res.engine_lora)}",
        ],
    ]
    shape = "Llama-2-7B-shaped" if not env.smoke else "tiny"
    lines = [
        "### Decode step with and without adapters",
        "",
        f"Random-weight {shape} `LlamaForCausalLM`, {res.layers} layers, batch {res.batch}, "
        f"context {res.context} tokens per sequence (paged, block {env.grid.block_size}, "
        f"{res.num_kv_blocks} blocks, scattered), forward + logits; *with adapters*: "
        f"{res.adapters} distinct rank-{res.rank} adapters on q,k,v,o,gate,up,down (slots "
        f"stored at rank {res.max_rank}); *base*: the same step with `LoraMeta.active=False`. "
        f"Target: overhead < {TARGET_OVERHEAD:.0%} (Punica reports a few percent).",
        "",
        markdown_table(
            ["timing", "base ms", "with adapters ms", "overhead", "tokens/s base / lora"], body
        ),
    ]
    if not res.lora_changes_logits:
        lines += ["", "WARNING: the adapters did not change the logits (LoRA path not taken?)."]
    lines += [f"\nNote: {n}" for n in res.notes]
    return lines


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
