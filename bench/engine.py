"""Generated tokens/s of mixed-adapter batches: loraplex vs HF transformers + PEFT vs a per-adapter loop.

    python bench/engine.py [--adapters 1,8,32] [--requests 64] [--prompt-len 128] [--output-len 64]
                           [--hidden 512] [--layers 6] [--repeats 1] [--quiet PCT] [--write-docs]

Every system gets the same ``--requests`` random prompts (exactly ``--prompt-len`` token ids, fixed
seed) and decodes ``--output-len`` tokens greedily for each, ignoring EOS.  Request ``i`` uses adapter
``i % n``; all adapters are rank 16 over q, k, v, o, gate, up and down.

* loraplex: one ``LLM.generate`` call for the whole mixed batch.
* HF+PEFT: one ``PeftModel`` with every adapter loaded, one ``generate`` call for the whole batch
  with ``adapter_names`` per row (PEFT's mixed-adapter batch inference).
* per-adapter loop: the same loraplex engine, one ``generate`` call per adapter, one after another.

tokens/s = requests * output_len / wall time of the call(s), prefill included.  A warm-up pass of
each system over every adapter runs first (so every adapter is resident in a loraplex slot, as it is
in the PeftModel).  With ``--repeats N`` the three systems run N times, interleaved, and the fastest
run of each counts (the box may be shared: each kept run also records the system-wide CPU pressure,
i.e. the share of its wall time in which some task waited for a CPU); ``--quiet PCT`` makes each
timed run first wait (up to 2 min) for that pressure to fall below PCT %.  The run also checks
that loraplex's greedy tokens equal HF's.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    cpu_stall_us,
    load_average,
    machine_line,
    markdown_table,
    num_cores,
    replace_doc_section,
    today,
    wait_for_quiet,
)

from loraplex import LLM, SamplingParams  # noqa: E402
from loraplex.demo import (  # noqa: E402
    ALL_MODULES,
    TinyModelSpec,
    write_demo_tokenizer,
    write_random_adapter,
    write_random_model,
)

SECTION = "Engine throughput (bench/engine.py)"
RANK, ALPHA = 16, 32
PROMPT_SEED = 1234
WARMUP_OUTPUT_LEN = 4
PAD_ID = 0  # the demo tokenizer's <s>; only ever under attention_mask = 0
TARGET_VS_HF = 3.0  # loraplex / HF+PEFT tokens/s at the largest adapter count
TARGET_VS_ONE = 0.8  # loraplex at the largest adapter count / loraplex at 1 adapter

Tokens = list[list[int]]


@dataclass(frozen=True)
class Args:
    adapters: list[int]
    requests: int
    prompt_len: int
    output_len: int
    hidden: int
    layers: int
    repeats: int
    quiet: float
    write_docs: bool


@dataclass(frozen=True)
class Workload:
    prompts: Tokens
    adapter_names: list[str]  # every adapter on disk; runs use the first n of them


@dataclass(frozen=True)
class Timed:
    tokens: Tokens
    seconds: float
    pressure: float | None  # % of the wall time in which some task on the box waited for a CPU


@dataclass(frozen=True)
class Row:
    adapters: int
    loraplex: Timed
    hf: Timed
    loop: Timed


# ---- setup -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Args:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--adapters", default="1,8,32", help="comma-separated adapter counts")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512, help="hidden size (head_dim 64)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument(
        "--repeats", type=int, default=1, help="interleaved runs per system; fastest counts"
    )
    p.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="PCT",
        help="before each timed run, wait up to 2 min for the box's CPU pressure to drop below PCT %%",
    )
    p.add_argument(
        "--write-docs", action="store_true", help=f"update docs/benchmarks.md, section {SECTION!r}"
    )
    ns = p.parse_args(argv)
    counts = sorted({int(x) for x in ns.adapters.split(",") if x.strip()})
    if not counts or counts[0] < 1:
        p.error("--adapters needs positive counts")
    if ns.hidden % 64:
        p.error("--hidden must be a multiple of 64 (head_dim is 64)")
    if ns.repeats < 1:
        p.error("--repeats must be >= 1")
    return Args(
        counts,
        ns.requests,
        ns.prompt_len,
        ns.output_len,
        ns.hidden,
        ns.layers,
        ns.repeats,
        ns.quiet,
        ns.write_docs,
    )


def model_spec(hidden: int, layers: int, vocab: int, max_positions: int) -> TinyModelSpec:
    """Llama shape: head_dim 64, GQA with 2 query heads per KV head, SwiGLU at ~8/3 x hidden."""
    heads = hidden // 64
    return TinyModelSpec(
        arch="llama",
        hidden_size=hidden,
        intermediate_size=round(hidden * 8 / 3 / 64) * 64,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        head_dim=64,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        seed=0,
    )


def write_checkpoint(root: Path, args: Args) -> tuple[TinyModelSpec, dict[str, Path]]:
    """Demo tokenizer + random Llama + ``max(args.adapters)`` rank-16 all-target adapters."""
    model_dir = root / "model"
    # The demo BPE saturates below 2048 tokens on its corpus; the model uses the real size.
    vocab = write_demo_tokenizer(model_dir, 2048)
    spec = model_spec(args.hidden, args.layers, vocab, max_positions=2048)
    write_random_model(model_dir, spec)
    paths = {}
    for i in range(max(args.adapters)):
        paths[f"lora-{i}"] = path = root / "adapters" / f"lora-{i}"
        write_random_adapter(path, spec, rank=RANK, alpha=ALPHA, targets=ALL_MODULES, seed=i + 1)
    return spec, paths


def random_prompts(n: int, length: int, vocab: int) -> Tokens:
    """``n`` prompts of exactly ``length`` ids, avoiding the 4 special tokens of the demo vocab."""
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randint(4, vocab, (n, length), generator=gen).tolist()


def assign(n_requests: int, names: Sequence[str]) -> list[str]:
    """Round-robin: request i uses adapter i % len(names)."""
    return [names[i % len(names)] for i in range(n_requests)]


def timed(fn: Callable[[], Tokens], quiet: float = 0.0) -> Timed:
    """Run ``fn`` once; with ``quiet`` > 0 first wait for the box's CPU pressure to drop below it."""
    gc.collect()
    if quiet > 0:
        wait_for_quiet(quiet)
    stall, start = cpu_stall_us(), time.perf_counter()
    tokens = fn()
    seconds = time.perf_counter() - start
    after = cpu_stall_us()
    pressure = None if stall is None or after is None else (after - stall) / 1e4 / seconds
    return Timed(tokens, seconds, pressure)


def fastest(a: Timed | None, b: Timed) -> Timed:
    return b if a is None or b.seconds < a.seconds else a


# ---- the three systems -------------------------------------------------------------------------


def build_loraplex(model_dir: Path, paths: dict[str, Path], args: Args) -> LLM:
    llm = LLM(
        model_dir,
        dtype="float32",
        device="cpu",
        max_loras=max(args.adapters),
        max_lora_rank=RANK,
        max_num_seqs=args.requests,
        max_model_len=args.prompt_len + args.output_len + 16,
    )
    for name, path in paths.items():
        llm.add_lora(name, path)
    return llm


def run_loraplex(llm: LLM, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params, lora=loras)]


def run_loop(llm: LLM, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    """One generate() per adapter, in adapter order; results go back to request order."""
    out: Tokens = [[] for _ in prompts]
    for name in dict.fromkeys(loras):
        rows = [i for i, lo in enumerate(loras) if lo == name]
        tokens = run_loraplex(llm, [prompts[i] for i in rows], [name] * len(rows), output_len)
        for i, toks in zip(rows, tokens, strict=True):
            out[i] = toks
    return out


def build_hf(model_dir: Path, paths: dict[str, Path]) -> torch.nn.Module:
    """One PeftModel holding every adapter side by side."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    items = iter(paths.items())
    first, first_path = next(items)
    model = PeftModel.from_pretrained(base, str(first_path), adapter_name=first)
    for name, path in items:
        model.load_adapter(str(path), adapter_name=name)
    # No EOS for generate(): an EOS it knows would be masked out by min_new_tokens, while loraplex's
    # ignore_eos may pick it (and go on), so greedy outputs would differ wherever EOS is the argmax.
    # (An eos_token_id=None in the call's GenerationConfig is filled back in from this default.)
    model.generation_config.eos_token_id = None
    return model.eval()


def left_pad(prompts: Tokens, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [B, max_len], prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def run_hf(model: torch.nn.Module, prompts: Tokens, loras: list[str], output_len: int) -> Tokens:
    """Whole batch in one generate() call, left padded (equal-length prompts: no pad tokens).

    ``build_hf`` cleared the model's EOS, so greedy picks are never masked (what loraplex's
    ``ignore_eos`` does) and exactly ``output_len`` tokens come back.
    """
    from transformers import GenerationConfig

    ids, mask = left_pad(prompts, PAD_ID)
    config = GenerationConfig(
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
        pad_token_id=PAD_ID,
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        adapter_names=loras,
        generation_config=config,
    )
    return out[:, ids.shape[1] :].tolist()


# ---- measuring ---------------------------------------------------------------------------------


def warm_up(llm: LLM, hf: torch.nn.Module, work: Workload, args: Args) -> None:
    """Every adapter once through both engines: fills loraplex's slots, warms allocators and caches."""
    loras = assign(args.requests, work.adapter_names[: max(args.adapters)])
    run_loraplex(llm, work.prompts, loras, WARMUP_OUTPUT_LEN)
    run_hf(hf, work.prompts, loras, WARMUP_OUTPUT_LEN)


def fmt_run(t: Timed) -> str:
    stall = "" if t.pressure is None else f" (cpu pressure {t.pressure:.0f}%)"
    return f"{t.seconds:.2f}s{stall}"


def measure(llm: LLM, hf: torch.nn.Module, work: Workload, n: int, args: Args) -> Row:
    """The three systems, ``args.repeats`` times interleaved; the fastest run of each is kept."""
    loras = assign(len(work.prompts), work.adapter_names[:n])
    systems: dict[str, Callable[[], Tokens]] = {
        "loraplex": lambda: run_loraplex(llm, work.prompts, loras, args.output_len),
        "hf": lambda: run_hf(hf, work.prompts, loras, args.output_len),
        "loop": lambda: run_loop(llm, work.prompts, loras, args.output_len),
    }
    best: dict[str, Timed | None] = dict.fromkeys(systems)
    for rep in range(args.repeats):
        runs = {name: timed(fn, args.quiet) for name, fn in systems.items()}
        print(
            f"  {n:>3} adapters, run {rep + 1}: loraplex {fmt_run(runs['loraplex'])}  "
            f"HF+PEFT {fmt_run(runs['hf'])}  loop {fmt_run(runs['loop'])}",
            flush=True,
        )
        best = {name: fastest(best[name], t) for name, t in runs.items()}
    return Row(n, *(t for t in best.values() if t is not None))


def agreement(a: Tokens, b: Tokens) -> tuple[float, float]:
    """(% of token positions equal, % of requests with identical outputs)."""
    same = sum(x == y for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    total = sum(len(r) for r in a)
    exact = sum(ra == rb for ra, rb in zip(a, b, strict=True))
    return 100.0 * same / total, 100.0 * exact / len(a)


# ---- reporting ---------------------------------------------------------------------------------


def tok_s(t: Timed, generated: int) -> float:
    return generated / t.seconds


def results_table(rows: list[Row], generated: int) -> str:
    one = next((r for r in rows if r.adapters == 1), None)
    headers = [
        "adapters",
        "loraplex tok/s",
        "HF+PEFT tok/s",
        "per-adapter loop tok/s",
        "loraplex/HF",
        "loraplex vs own 1-adapter",
    ]
    body = []
    for r in rows:
        lp, hf, loop = (tok_s(t, generated) for t in (r.loraplex, r.hf, r.loop))
        vs_one = f"{lp / tok_s(one.loraplex, generated):.2f}x" if one else "n/a"
        body.append(
            [str(r.adapters), f"{lp:.0f}", f"{hf:.0f}", f"{loop:.0f}", f"{lp / hf:.2f}x", vs_one]
        )
    return markdown_table(headers, body)


def agreement_table(rows: list[Row]) -> str:
    body = []
    for r in rows:
        tok_hf, seq_hf = agreement(r.loraplex.tokens, r.hf.tokens)
        tok_loop, seq_loop = agreement(r.loraplex.tokens, r.loop.tokens)
        body.append(
            [
                str(r.adapters),
                f"{tok_hf:.1f}%",
                f"{seq_hf:.1f}%",
                f"{tok_loop:.1f}%",
                f"{seq_loop:.1f}%",
            ]
        )
    headers = ["adapters", "tokens = HF", "requests = HF", "tokens = loop", "requests = loop"]
    return markdown_table(headers, body)


def runs_table(rows: list[Row]) -> str:
    """Wall seconds of the kept runs, with the box's CPU pressure during each."""
    headers = ["adapters", "loraplex s", "HF+PEFT s", "per-adapter loop s"]
    body = [[str(r.adapters), *(fmt_run(t) for t in (r.loraplex, r.hf, r.loop))] for r in rows]
    return markdown_table(headers, body)


def target_lines(rows: list[Row], generated: int) -> list[str]:
    top = rows[-1]
    lp_top = tok_s(top.loraplex, generated)
    vs_hf = lp_top / tok_s(top.hf, generated)
    lines = [
        f"- loraplex >= {TARGET_VS_HF:g}x HF+PEFT tokens/s at {top.adapters} adapters: "
        f"{vs_hf:.2f}x, {'met' if vs_hf >= TARGET_VS_HF else 'MISSED'}",
    ]
    one = next((r for r in rows if r.adapters == 1), None)
    if one is not None:
        vs_one = lp_top / tok_s(one.loraplex, generated)
        lines.append(
            f"- loraplex at {top.adapters} adapters >= {TARGET_VS_ONE:g}x loraplex at 1 adapter: "
            f"{vs_one:.2f}x, {'met' if vs_one >= TARGET_VS_ONE else 'MISSED'}"
        )
    return lines


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


# ---- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(num_cores())
    started, load = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as tmp:
        spec, paths = write_checkpoint(Path(tmp), args)
        work = Workload(
            random_prompts(args.requests, args.prompt_len, spec.vocab_size), list(paths)
        )
        llm = build_loraplex(Path(tmp) / "model", paths, args)
        hf = build_hf(Path(tmp) / "model", paths)
        model = describe_model(spec, sum(p.numel() for p in llm.engine.model.parameters()))
        print(f"model: {model}\nmachine: {machine_line()}\nwarming up...", flush=True)
        warm_up(llm, hf, work, args)
        rows = [measure(llm, hf, work, n, args) for n in args.adapters]
    total = time.perf_counter() - started
    generated = args.requests * args.output_len
    print()
    print(results_table(rows, generated))
    print()
    print(runs_table(rows))
    print()
    print(agreement_table(rows))
    print()
    print("\n".join(target_lines(rows, generated)))
    print(f"\ntotal {total:.0f}s")
    if args.write_docs:
        replace_doc_section(SECTION, docs_body(rows, args, argv, model, total, load))
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
