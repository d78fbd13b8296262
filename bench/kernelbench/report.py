"""The report: targets, the section header, markdown / json output after every part, and
merging sections of several runs for --docs-from."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import today

import loraplex

from .attention import AttnRow
from .config import SECTION
from .decode_step import StepResult
from .env import Env, device_line, versions
from .fmt import fmt_rate
from .lora_tables import decode_section, lora_section, lora_target_lines, step_target_lines
from .lora_variants import LoraRow
from .sections import attention_section


def target_lines(
    lora: list[LoraRow] | None,
    step: StepResult | None,
    failures: Sequence[str] = (),
    env: Env | None = None,
) -> list[str]:
    lines = ["### Targets", ""]
    if step is not None and env is not None:
        lines += step_target_lines(step, env)
    if lora:
        lines += lora_target_lines(lora)
    lines += [f"- {f}" for f in failures]
    return lines


@dataclass
class Results:
    lora: list[LoraRow] | None = None
    prefill: list[AttnRow] | None = None
    decode_attn: list[AttnRow] | None = None
    step: StepResult | None = None
    failures: list[str] = field(default_factory=list)


def command_line(argv: Sequence[str]) -> str:
    """The command as a reader should run it (output-file options left out)."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--md", "--json"):
            skip = True
        elif not a.startswith(("--md=", "--json=")):
            keep.append(a)
    return " ".join(["python", "bench/kernels.py", *keep])


def render(res: Results, env: Env, argv: Sequence[str]) -> str:
    launches = "CUDA graph replay" if env.args.graphs else "eager launches behind a GPU sleep"
    timing = (
        f"median of {env.args.reps} runs after {env.args.warmup} warm-ups, CUDA events, L2 "
        f"flushed before each run, {launches}"
    )
    if env.smoke:
        timing = f"median wall time of {env.args.reps} runs after {env.args.warmup} warm-up"
    head = [
        f"Command: `{command_line(argv)}` ({today()}).",
        "",
        f"- Device: {device_line(env)}; {versions()}; dtype {str(env.dtype).removeprefix('torch.')}; "
        f"kernels: {env.ops.backend}; loraplex from `{Path(loraplex.__file__).parent}`.",
        f"- Measured ceilings: copy {fmt_rate(env.copy_bw, 'B')} (bytes read + written), "
        f"matmul {fmt_rate(env.mm_rate, 'FLOP')} ({str(env.dtype).removeprefix('torch.')}, "
        "random data).",
        f"- Kernel times: {timing}. µs unless noted.",
    ]
    if env.smoke:
        head = [
            f"**CPU SMOKE RUN: {env.ops.backend} kernels on tiny shapes, wall-clock timing. "
            "Not for the docs.**",
            "",
            *head,
        ]
    parts = [*head, ""]
    parts += target_lines(res.lora, res.step, res.failures, env) + [""]
    if res.lora is not None:
        parts += lora_section(res.lora, env) + [""]
    if res.step is not None:
        parts += decode_section(res.step, env) + [""]
    if res.prefill is not None and res.decode_attn is not None:
        parts += attention_section(res.prefill, res.decode_attn, env) + [""]
    return "\n".join(parts).strip() + "\n"


def to_json(res: Results, env: Env) -> dict[str, Any]:
    return {
        "device": device_line(env),
        "versions": versions(),
        "date": today(),
        "smoke": env.smoke,
        "dtype": str(env.dtype),
        "copy_bytes_per_s": env.copy_bw,
        "matmul_flop_per_s": env.mm_rate,
        "lora": [dataclasses.asdict(r) for r in res.lora or []],
        "prefill_attention": [dataclasses.asdict(r) for r in res.prefill or []],
        "decode_attention": [dataclasses.asdict(r) for r in res.decode_attn or []],
        "decode_step": dataclasses.asdict(res.step) if res.step else None,
        "failures": res.failures,
    }


def emit(res: Results, env: Env, argv: Sequence[str]) -> str:
    """Write what is known so far to --md / --json (called after every part)."""
    body = render(res, env, argv)
    if env.args.md:
        Path(env.args.md).write_text(f"## {SECTION}\n\n{body}")
    if env.args.json:
        Path(env.args.json).write_text(json.dumps(to_json(res, env), indent=1, default=str))
    return body


def section_parts(text: str) -> tuple[str, list[str]]:
    """A section made by --md: (header before the first ``### ``, the ``### `` subsections)."""
    if text.startswith("## "):
        text = text.split("\n", 1)[1]
    head, *subs = re.split(r"(?m)^(?=### )", text)
    return head.strip(), [x.strip() for x in subs]


def merge_sections(texts: Sequence[str]) -> str:
    """One docs section from several runs (e.g. ``--only lora`` and ``--only attn,decode``):
    the first run's header with every run's command, the target bullets of all runs, and the
    other subsections in order (a later run's copy of a subsection replaces an earlier one)."""
    heads, subs, targets = [], {}, []
    for text in texts:
        head, parts = section_parts(text)
        heads.append(head)
        for sub in parts:
            title = sub.split("\n", 1)[0]
            if title == "### Targets":
                targets += [ln for ln in sub.splitlines() if ln.startswith("- ")]
            else:
                subs[title] = sub
    commands = [ln for h in heads for ln in h.splitlines() if ln.startswith("Command: ")]
    rest = [ln for ln in heads[0].splitlines() if not ln.startswith("Command: ")]
    out = ["\n".join(commands), "\n".join(rest).strip(), "### Targets\n\n" + "\n".join(targets)]
    return "\n\n".join([*out, *subs.values()]).strip() + "\n"
