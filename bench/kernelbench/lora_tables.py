"""The LoRA subsections of the report: the SGMV/BGMV tables (v1 and v2 kernels side by side),
the decode step with and without adapters, and their target lines."""

from __future__ import annotations

import math
import statistics

from common import markdown_table

from .config import BIG_FLOOR_S, TARGET_FLOOR_X, TARGET_OVERHEAD
from .decode_step import StepResult
from .env import Env
from .fmt import err_flag, fmt_num, fmt_us, fmt_x
from .lora_cases import LoraCase
from .lora_variants import LoraRow

# The targets (kernels measured side by side): BGMV rows whose floor is at least
# BIG_FLOOR_S within 3x, SGMV within 2x, the decode step's LoRA part within 2x of reading the
# adapters once, real rank faster than padded on mixed ranks.
TARGET_BGMV_X, TARGET_SGMV_X, TARGET_STEP_LORA_X = 3.0, 2.0, 2.0
KERNELS = {"v1": ("real", "padded"), "v2": ("v2", "padded_v2")}  # kernel -> (real, padded)

LORA_HEADERS = [
    "v1 µs",
    "v2 µs",
    "padded v1 µs",
    "padded v2 µs",
    "gather-bmm (padded) µs",
    "per-adapter loop µs",
    "floor µs",
    "v2 GB/s",
    "x floor v1",
    "x floor v2",
    "v1 / v2",
    "padded / real v2",
    "max err",
]


def lora_cells(r: LoraRow, env: Env) -> list[str]:
    t = r.times
    v2 = t.get("v2", math.nan)
    gbs = r.nbytes / v2 / 1e9 if math.isfinite(v2) else math.nan
    floor = fmt_us(r.floor_s) + (" (math)" if r.bound == "math" else "")
    graphs = "" if all(h != "eager" for h in r.how.values()) or env.smoke else " (some eager)"

    def x_floor(variant: str) -> str:
        x = r.x_floor_of(variant)
        return fmt_x(x) + (" ✗" if math.isfinite(x) and x > TARGET_FLOOR_X else "")

    return [
        fmt_us(t.get("real")) + graphs,
        fmt_us(t.get("v2")),
        fmt_us(t.get("padded")),
        fmt_us(t.get("padded_v2")),
        fmt_us(t.get("gather")),
        fmt_us(t.get("loop")),
        floor,
        fmt_num(gbs),
        x_floor("real"),
        x_floor("v2"),
        fmt_x(t.get("real", math.nan) / v2),
        fmt_x(t.get("padded_v2", math.nan) / v2),
        err_flag(r.errors, env.tol),
    ]


def shape_label(c: LoraCase) -> str:
    return f"{c.requests} rows" if c.mode == "bgmv" else f"{c.requests} x {c.tokens} tok"


def lora_rank_table(rows: list[LoraRow], mode: str, env: Env) -> str:
    sel = [r for r in rows if r.case.sweep == "rank" and r.case.mode == mode]
    body = [[r.case.group, r.case.rank_label, *lora_cells(r, env)] for r in sel]
    return markdown_table(["projections", "ranks", *LORA_HEADERS], body)


def lora_load_table(rows: list[LoraRow], mode: str, env: Env, sweep: str = "load") -> str:
    sel = [r for r in rows if r.case.sweep == sweep and r.case.mode == mode]
    body = [
        [
            shape_label(r.case),
            f"{r.used_adapters}/{r.case.adapters}",
            r.case.popularity,
            str(r.segments),
            fmt_us(r.times.get("plan_v2")) if mode == "bgmv" else "—",
            *lora_cells(r, env),
        ]
        for r in sel
    ]
    seg = "adapter groups" if mode == "bgmv" else "segments"
    head = ["batch", "adapters used/n", "popularity", seg, "v2 plan µs"]
    return markdown_table([*head, *LORA_HEADERS], body)


def lora_section(rows: list[LoraRow], env: Env) -> list[str]:
    g = env.grid
    req, tok = g.sgmv_rank_shape
    words = (
        "projections: qkv = q|k|v fused (3 slices), o, gate_up = gate|up fused, down, layer = all "
        "four calls of one decoder layer"
    )
    return [
        "### Multi-LoRA kernels (SGMV / BGMV)",
        "",
        f"Slots stored at rank {g.max_rank} (the engine's `max_lora_rank`); each adapter's real "
        'rank in `ranks` ("8/16/64": adapter *j* has the *j* mod 3-th). Columns: **v1** / '
        "**v2** = the engine's `add_lora` at real rank with the v1 kernels (one program per "
        "decode row, the default) or the v2 kernels (`LORAPLEX_LORA_KERNEL=v2`: rows grouped by "
        "adapter, split-K shrink); **padded** = the same kernels with every used slot's rank set "
        "to the batch's largest (vLLM pads to `--max-lora-rank`, so it does no better); "
        "**gather-bmm** = torch gather of the padded weights per row (BGMV) or per segment, rows "
        "padded to the longest segment (SGMV), then `bmm`; **per-adapter loop** = rows grouped "
        "by adapter, `(x_g @ A^T) @ B^T` at the real rank; **v2 plan** = v2's grouping of the "
        "decode rows (a device sort, made once per step for every layer, so left out of the v2 "
        "column). **floor** = bytes (x read, y read + written, real-rank A and B of the adapters "
        'used) / copy rate, or FLOPs / matmul rate if larger ("math"); **GB/s** = those bytes / '
        f"v2 time; ✗ = more than {TARGET_FLOOR_X:g}x the floor. Every variant's delta, added to "
        "the original y, is checked against the torch twins in fp32 (max err = relative L2 "
        "error).",
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
        f"BGMV (decode), more adapters at one batch ({g.scale_rows} rows, one decoder layer, "
        f"ranks {'/'.join(map(str, g.load_ranks))}, round robin over n adapters): Punica's "
        "claim is that the time stays flat (distinct ≈ identical) while the floor grows with "
        "the adapters read.",
        "",
        lora_load_table(rows, "bgmv", env, sweep="scale"),
        "",
        "SGMV (prefill), requests x tokens, one decoder layer (requests sorted by adapter and "
        "merged into segments, as `build_prefill` does).",
        "",
        lora_load_table(rows, "sgmv", env),
    ]


def _within(rows: list[LoraRow], variant: str, bound: float) -> tuple[int, int, float]:
    xs = [r.x_floor_of(variant) for r in rows]
    xs = [x for x in xs if math.isfinite(x)]
    return sum(x <= bound for x in xs), len(xs), statistics.median(xs) if xs else math.nan


def lora_target_lines(rows: list[LoraRow]) -> list[str]:
    lines = []
    bgmv = [r for r in rows if r.case.mode == "bgmv" and r.floor_s >= BIG_FLOOR_S]
    sgmv = [r for r in rows if r.case.mode == "sgmv"]
    mixed = [r for r in rows if r.case.sweep == "rank" and len(set(r.case.ranks)) > 1]
    scale = [r for r in rows if r.case.sweep == "scale"]
    for kernel, (real, padded) in KERNELS.items():
        ok, n, med = _within(bgmv, real, TARGET_BGMV_X)
        lines.append(
            f"- {kernel}: BGMV rows with a floor >= {BIG_FLOOR_S * 1e6:.0f} µs within "
            f"{TARGET_BGMV_X:g}x of it: {ok}/{n} (median {med:.2f}x)"
        )
        ok, n, med = _within(sgmv, real, TARGET_SGMV_X)
        lines.append(
            f"- {kernel}: SGMV within {TARGET_SGMV_X:g}x of the floor: {ok}/{n} (median {med:.2f}x)"
        )
        gains = [r.times.get(padded, math.nan) / r.times.get(real, math.nan) for r in mixed]
        gains = [x for x in gains if math.isfinite(x)]
        if gains:
            lines.append(
                f"- {kernel}: real rank vs padded on mixed ranks: {min(gains):.2f}x-"
                f"{max(gains):.2f}x faster (target > 1x)"
            )
        times = [r.times.get(real, math.nan) for r in scale]
        if times and all(math.isfinite(t) for t in times):
            lines.append(
                f"- {kernel}: BGMV with {'/'.join(str(r.case.adapters) for r in scale)} adapters "
                f"at batch {scale[0].case.requests}: "
                + " / ".join(fmt_us(t) for t in times)
                + f" µs (most / least {max(times) / min(times):.2f}x)"
            )
    return lines


def _step_rows(res: StepResult) -> list[tuple[str, float, float, float]]:
    return [
        ("eager (host time included, synced per step)", res.eager_base, res.eager_lora,
         res.eager_lora_v2),
        ("CUDA graph replay" + (f" ({res.graph_note})" if res.graph_note else ""),
         res.graph_base, res.graph_lora, res.graph_lora_v2),
        ("engine: `DecodeGraphRunner` copy-in + replay (host time included, synced per step)"
         + ("" if res.engine_capture_s > 0 else " (static buffers, no capture: CPU)"),
         res.engine_base, res.engine_lora, res.engine_lora_v2),
    ]  # fmt: skip


def step_target_lines(res: StepResult, env: Env) -> list[str]:
    floor = res.lora_bytes / env.copy_bw if env.copy_bw else math.nan
    lines = []
    for label, base, lora_v1, lora_v2 in _step_rows(res):
        for kernel, lo in (("v1", lora_v1), ("v2", lora_v2)):
            if not (math.isfinite(base) and math.isfinite(lo)):
                continue
            ov, part = lo / base - 1, (lo - base) / floor
            lines.append(
                f"- {kernel}: decode step with {res.adapters} distinct rank-{res.rank} adapters "
                f"vs none, {label.split(' (')[0]}: {ov * 100:+.1f}% (target < "
                f"{TARGET_OVERHEAD:.0%}: {'met' if ov < TARGET_OVERHEAD else 'MISSED'}); LoRA "
                f"part {(lo - base) * 1e3:.2f} ms = {part:.1f}x its floor of "
                f"{floor * 1e3:.2f} ms (target <= {TARGET_STEP_LORA_X:g}x: "
                f"{'met' if part <= TARGET_STEP_LORA_X else 'MISSED'})"
            )
    return lines


def decode_section(res: StepResult, env: Env) -> list[str]:
    def ms(t: float) -> str:
        return f"{t * 1e3:.2f}" if math.isfinite(t) else "—"

    def overhead(base: float, lora: float) -> str:
        if not (math.isfinite(base) and math.isfinite(lora)):
            return "—"
        ov = lora / base - 1
        return f"{ov * 100:+.1f}% " + ("(met)" if ov < TARGET_OVERHEAD else "(MISSED)")

    def tok_s(t: float) -> str:
        return f"{res.batch / t:,.0f}" if math.isfinite(t) else "—"

    body = [
        [label, ms(base), ms(v1), ms(v2), overhead(base, v1), overhead(base, v2),
         f"{tok_s(base)} / {tok_s(v1)} / {tok_s(v2)}"]
        for label, base, v1, v2 in _step_rows(res)
    ]  # fmt: skip
    floor = res.lora_bytes / env.copy_bw if env.copy_bw else math.nan
    shape = "Llama-2-7B-shaped" if not env.smoke else "tiny"
    lines = [
        "### Decode step with and without adapters",
        "",
        f"Random-weight {shape} `LlamaForCausalLM`, {res.layers} layers, batch {res.batch}, "
        f"context {res.context} tokens per sequence (paged, block {env.grid.block_size}, "
        f"{res.num_kv_blocks} blocks, scattered), forward + logits; *with adapters*: "
        f"{res.adapters} distinct rank-{res.rank} adapters on q,k,v,o,gate,up,down (slots "
        f"stored at rank {res.max_rank}), LoRA by the v1 or the v2 kernels; *base*: the same "
        f"step with `LoraMeta.active=False`. Target: overhead < {TARGET_OVERHEAD:.0%} (Punica "
        f"reports a few percent). The LoRA part's floor, reading the adapters' real-rank A and "
        f"B once ({res.lora_bytes / 1e9:.3g} GB), is {floor * 1e3:.3g} ms.",
        "",
        markdown_table(
            [
                "timing",
                "base ms",
                "v1 ms",
                "v2 ms",
                "overhead v1",
                "overhead v2",
                "tokens/s base / v1 / v2",
            ],
            body,
        ),  # fmt: skip
    ]
    if not res.lora_changes_logits:
        lines += ["", "WARNING: the adapters did not change the logits (LoRA path not taken?)."]
    lines += [f"\nNote: {n}" for n in res.notes]
    return lines
