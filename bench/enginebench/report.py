"""The docs section of ``bench/engine.py`` in docs/benchmarks.md: its title and its body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from common import machine_line, today

from loraplex.tooling.demo import TinyModelSpec

from .tables import agreement_table, results_table, runs_table, target_lines
from .workload import ALPHA, RANK

if TYPE_CHECKING:
    from .measure import Row
    from .options import Args

SECTION = "Engine throughput (bench/engine.py)"


def describe_model(spec: TinyModelSpec, n_params: int) -> str:
    return (
        f"random Llama, hidden {spec.hidden_size}, {spec.num_layers} layers, {spec.num_heads} heads "
        f"/ {spec.num_kv_heads} KV heads (head_dim 64), intermediate {spec.intermediate_size}, "
        f"vocab {spec.vocab_size} ({n_params / 1e6:.1f}M parameters), fp32; adapters rank {RANK}, "
        f"alpha {ALPHA}, targets q,k,v,o,gate,up,down"
    )


def quiet_note(quiet: float) -> str:
    if quiet <= 0:
        return ""
    return f"; each started once the CPU pressure was below {quiet:g}%, or after 2 min"


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python", "bench/engine.py", *argv])


def docs_body(
    rows: list[Row], args: Args, argv: Sequence[str], model: str, total_s: float, load: str
) -> str:
    generated = args.requests * args.output_len
    return "\n".join(
        [
            f"{args.requests} requests, prompt {args.prompt_len} tokens (random ids, fixed seed), "
            f"{args.output_len} output tokens each, greedy, `ignore_eos`; request *i* uses adapter "
            "*i* mod *n*. tokens/s = generated tokens / wall time of the call(s), prefill included.",
            "",
            "- **loraplex**: one `LLM.generate` over the whole mixed batch.",
            "- **HF+PEFT**: one `PeftModel` with every adapter loaded, one `generate` with per-row "
            "`adapter_names` (PEFT mixed-adapter batch inference), left padding.",
            "- **per-adapter loop**: the same loraplex engine, one `generate` per adapter, in turn.",
            "",
            results_table(rows, generated),
            "",
            f"Wall time of the kept runs (fastest of {args.repeats}, interleaved"
            f"{quiet_note(args.quiet)}) and the CPU pressure during each (share of the time some "
            "task on the box waited for a CPU; high values mean other work competed for the cores):",
            "",
            runs_table(rows),
            "",
            "Greedy agreement of loraplex with HF+PEFT and with the per-adapter loop:",
            "",
            agreement_table(rows),
            "",
            "Targets:",
            "",
            *target_lines(rows, generated),
            "",
            f"- Model: {model}.",
            f"- Command: `{command_line(argv)}` (whole run {total_s / 60:.1f} min, warm-up included).",
            f"- Machine: {machine_line()}; load average at start {load}.",
            f"- Date: {today()}.",
        ]
    )
