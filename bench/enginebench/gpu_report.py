"""Tables, targets and files of ``bench/engine_gpu.py``."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from common import markdown_table, today

from .gpu_options import GpuArgs
from .gpu_runs import Run
from .workload import Tokens

SECTION = "Engine on the GPU (bench/engine_gpu.py)"
TARGET_DISTINCT_VS_BASE = 0.85


def _fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def _find(runs: Sequence[Run], system: str, mode: str, pattern_start: str) -> Run | None:
    return next(
        (
            r
            for r in runs
            if r.system == system and r.mode == mode and r.pattern.startswith(pattern_start)
        ),
        None,
    )


def throughput_table(runs: Sequence[Run], n: int) -> str:
    body = []
    for r in runs:
        base = _find(runs, r.system, r.mode, "base")
        vs = r.tok_s(n) / base.tok_s(n) if base is not None else math.nan
        step = r.decode_step_ms()
        body.append(
            [
                f"{'HF+PEFT' if r.system == 'HF' else f'loraplex {r.mode}'}, {r.pattern}",
                _fmt(r.tok_s(n, first=True)),
                _fmt(r.tok_s(n)),
                _fmt(r.prefill_s * 1e3 if r.prefill_s is not None else None),
                _fmt(step, 2),
                f"{vs:.2f}x",
            ]
        )
    headers = [
        "run",
        "tok/s, first run",
        "tok/s, best",
        "prefill + 1 token ms",
        "decode ms/step",
        "vs base",
    ]
    return markdown_table(headers, body)


def agreement(a: Tokens, b: Tokens) -> tuple[float, float]:
    """(% of rows identical over the shorter length, mean tokens before the first difference)."""
    same, first = 0, []
    for ra, rb in zip(a, b, strict=True):
        n = min(len(ra), len(rb))
        diff = next((i for i in range(n) if ra[i] != rb[i]), n)
        same += diff == n
        first.append(diff)
    return 100.0 * same / max(1, len(a)), sum(first) / max(1, len(first))


def agreement_table(runs: Sequence[Run]) -> str:
    pairs = []
    for r in runs:
        if r.system == "loraplex" and r.mode == "graphs":
            pairs.append(("graphs vs eager", r, _find(runs, "loraplex", "eager", r.pattern)))
    for r in runs:
        if r.system == "HF":
            pairs.append(
                ("loraplex vs HF+PEFT", _find(runs, "loraplex", runs[0].mode, r.pattern), r)
            )
    body = []
    for what, a, b in pairs:
        if a is None or b is None:
            continue
        rows, before = agreement(a.tokens, b.tokens)
        body.append([f"{what}, {a.pattern}", f"{rows:.0f}%", f"{before:.1f}"])
    return markdown_table(["pair", "rows identical", "tokens before the first difference"], body)


def target_lines(runs: Sequence[Run], n: int) -> list[str]:
    mode = runs[0].mode
    base, distinct = _find(runs, "loraplex", mode, "base"), None
    distinct = next((r for r in runs if r.mode == mode and r.pattern.endswith("distinct")), None)
    if base is None or distinct is None:
        return []
    ratio = distinct.tok_s(n) / base.tok_s(n)
    ok = "met" if ratio >= TARGET_DISTINCT_VS_BASE else "MISSED"
    lines = [
        f"- {distinct.pattern} adapters >= {TARGET_DISTINCT_VS_BASE}x base throughput ({mode}): "
        f"{ratio:.2f}x, {ok}"
    ]
    floor = distinct.tok_s(n)
    slow = [
        f"{r.pattern} ({'first run' if first else 'best'}) {r.tok_s(n, first):,.0f}"
        for r in runs
        if r.system == "loraplex" and r.mode == mode
        for first in (True, False)
        if r.tok_s(n, first) < floor and r is not distinct
    ]
    verdict = "met" if not slow else "MISSED: " + ", ".join(slow)
    lines.append(
        f"- no configuration slower than {distinct.pattern} adapters ({floor:,.0f} tok/s, {mode}; "
        f"first runs included): {verdict}"
    )
    eager = _find(runs, "loraplex", "eager", distinct.pattern)
    if mode == "graphs" and eager is not None:
        lines.append(f"- CUDA graphs vs eager, {distinct.pattern}: {floor / eager.tok_s(n):.2f}x")
    hf = _find(runs, "HF", "PEFT", distinct.pattern)
    if hf is not None:
        lines.append(f"- loraplex vs HF+PEFT, {distinct.pattern}: {floor / hf.tok_s(n):.1f}x")
    return lines


def body(
    runs: Sequence[Run], args: GpuArgs, header: Sequence[str], warmup: str, argv: Sequence[str]
) -> str:
    n, d = args.requests, args.dims
    shape = "Llama-2-7B layer shapes" if args.shape == "7b" else "tiny shapes (smoke run)"
    return "\n".join(
        [
            *header,
            f"- Model: random-weight Llama, {shape} (hidden {d['hidden']}, intermediate "
            f"{d['intermediate']}, {d['heads']} heads / {d['kv_heads']} KV heads), {args.layers} "
            f"layers, demo tokenizer, {args.dtype}; {args.adapters} PEFT adapters, rank "
            f"{args.rank}, on all 7 targets.",
            f"- Workload: {n} requests of {args.prompt_len} random prompt ids, {args.output_len} "
            "greedy tokens each (`ignore_eos`), one `LLM.generate`; tok/s = requests x output "
            f"tokens / wall time, prefill included. HF+PEFT: {args.hf_output_len} tokens per "
            "request, one `generate` with per-row `adapter_names` (base: `disable_adapter`).",
            f"- Start-up {warmup}. *first run* = the first time the pattern runs after it; "
            f"*best* = fastest of {args.repeats} more. Prefix caching off.",
            f"- Command: `python bench/engine_gpu.py {' '.join(argv)}`; date {today()}.",
            "",
            throughput_table(runs, n),
            "",
            "Greedy agreement:",
            "",
            agreement_table(runs),
            "",
            "Targets:",
            "",
            *target_lines(runs, n),
        ]
    )


def write_files(text: str, runs: Sequence[Run], args: GpuArgs, extra: dict) -> None:
    if args.md:
        Path(args.md).write_text(f"## {SECTION}\n\n{text}\n")
    if args.json:
        rows = [dataclasses.asdict(r) | {"tokens": None} for r in runs]
        Path(args.json).write_text(
            json.dumps({"args": dataclasses.asdict(args), "runs": rows} | extra, indent=1)
        )
