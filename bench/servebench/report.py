"""The docs section: command, machine, workload, tables, comparison and reading."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

import torch
from common import cpu_model, num_cores, today

from .kv_transfer import RAW_REPS
from .load import Planned, ServeResult
from .machine import gpu_name
from .stats import ms, one_min, summarize
from .tables import error_lines, kv_table, serve_table, tenant_table

SECTION = "Serving: disaggregated vs colocated (bench/serve.py)"


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["python", "bench/serve.py", *(shlex.quote(a) for a in argv)])


def workload_lines(
    args: argparse.Namespace, models: list[str], plans: list[list[Planned]]
) -> list[str]:
    pl, ol = args.prompt_len, args.output_len
    rates = ", ".join(
        f"{r:g} req/s ({len(p)} requests)" for r, p in zip(args.rate, plans, strict=True)
    )
    return [
        f"- Workload: open-loop Poisson arrivals for {args.duration:g} s per offered rate: {rates}; "
        f"seeded ({args.seed}), the same schedule for every configuration; a fresh stack for every "
        "(rate, configuration) run, in ABBA order (rate 1: disagg then colocated, rate 2: colocated "
        "then disagg, ...) against drift in the machine's load; "
        f"{args.tenants} tenants (each its own API key, weight 1, VTC fairness), models "
        f"{', '.join(f'`{m}`' for m in models)} drawn uniformly per request; prompt {pl[0]}-{pl[1]} "
        f"random token ids, max_tokens {ol[0]}-{ol[1]} with `ignore_eos`, greedy; streamed with "
        "`openai.AsyncOpenAI` (completions, `include_usage`).",
        "- TTFT: send -> first chunk with text; ITL: between consecutive text chunks (all requests "
        "pooled); TPOT: (E2E - TTFT) / (tokens - 1), mean over requests; req/s and tok/s over the "
        "window from the first send to the last answer; load avg: the machine's 1-minute load "
        "average before -> after the run.",
    ]


def comparison_lines(results: list[ServeResult]) -> list[str]:
    """One sentence per offered rate: colocated against disaggregated, from this run's numbers."""
    lines = []
    for rate in sorted({r.rate for r in results}):
        d = next((summarize(r) for r in results if r.rate == rate and r.config == "disagg"), None)
        c = next(
            (summarize(r) for r in results if r.rate == rate and r.config == "colocated"), None
        )
        if d is None or c is None:
            continue
        lines.append(
            f"- At {rate:g} req/s: output tok/s colocated {c['tok_s']:.0f} vs disaggregated "
            f"{d['tok_s']:.0f}; TTFT p50 {ms(c['ttft50'])} vs {ms(d['ttft50'])} ms, p99 "
            f"{ms(c['ttft99'])} vs {ms(d['ttft99'])} ms; ITL p50 {ms(c['itl50'])} vs "
            f"{ms(d['itl50'])} ms, p99 {ms(c['itl99'])} vs {ms(d['itl99'])} ms."
        )
    return lines


def docs_body(
    args: argparse.Namespace,
    argv: Sequence[str],
    results: list[ServeResult],
    kv: tuple | None,  # type: ignore[type-arg]
    models: list[str],
    plans: list[list[Planned]],
    total_s: float,
    load_start: str,
    load_end: str,
) -> str:
    gpu = gpu_name()
    machine = f"{cpu_model()}, {num_cores()} cores" + (f", {gpu}" if gpu else ", no GPU")
    lines = [
        f"- Command: `{command_line(argv)}` (whole run {total_s / 60:.1f} min).",
        f"- Machine: {machine}; torch {torch.__version__}; load average (1/5/15 min) {load_start} at "
        f"the start, {load_end} at the end (a shared box: other jobs ran alongside).",
        f"- Date: {today()}.",
        f"- Model: {'the demo model (4 layers, hidden 128; 4 demo adapters)' if not args.model else args.model}; "
        f"dtype {args.dtype}, device {args.device or 'auto'}, max-num-seqs {args.max_num_seqs} per worker.",
        "",
        "Serving (each run a fresh `loraplex up` stack: nats-server, redis-server, adapter store, "
        "scheduler, gateway, and the workers below; the comparison is fair in worker processes: "
        f"1 prefill + 1 decode against {args.colocated_workers} colocated workers that each prefill and decode):",
        "",
        *workload_lines(args, models, plans),
        "",
        serve_table(results),
        "",
        *comparison_lines(results),
        "",
        "Per tenant (completed requests / TTFT p50):",
        "",
        tenant_table(results, args.tenants),
    ]
    errs = error_lines(results)
    if errs:
        lines += ["", "Errors (most frequent first):", "", *errs]
    if kv is not None:
        rows, raw_mbs, chunk, max_payload = kv
        lines += [
            "",
            "K/V hand-over against raw NATS publish, same run, one nats-server started by the bench "
            f"(max_payload {max_payload} bytes, so K/V chunks and raw messages of {chunk} bytes), "
            "sender and receiver in this one process on separate connections.  Hand-over: the real "
            "`KVSender.ship` (prefill `Worker`) and `KVReceiver` (decode `Worker`) over real "
            "engines: export blocks, tensor -> bytes, KVBegin request/reply (reserve), KVChunk "
            "messages, reassembly, bytes -> tensor, import into the paged cache, first TokenDelta "
            "out; everything but the model's prefill.  *Export*: `export_blocks` alone (in the "
            "servers it runs inside the prefill step).  *Sender-side*: export until "
            "`KVSender.ship` returned (serialized, published, flushed).  Raw: the payload's bytes as bare messages of the same size, until the "
            f"subscriber has them all.  Medians of {args.kv_reps} after a warm-up.  MB = 10^6 bytes.",
            "",
            kv_table(rows),
            "",
            f"Raw NATS publish stream: {args.raw_mb} MB in {chunk}-byte messages, median of "
            f"{RAW_REPS}: **{raw_mbs:.0f} MB/s**.",
        ]
    lines += ["", *reading_lines(gpu, results)]
    return "\n".join(lines)


def load_span(results: list[ServeResult]) -> str:
    """Lowest and highest 1-minute load average seen around the serving runs."""
    loads = [
        float(one_min(x))
        for r in results
        for x in (r.load_before, r.load_after)
        if one_min(x) != "n/a"
    ]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"


def reading_lines(gpu: str | None, results: list[ServeResult]) -> list[str]:
    if gpu is not None:
        return [
            f"Reading: on a GPU ({gpu}) colocated prefill and decode interfere (a long prefill step "
            "stalls every running decode: ITL p99), which disaggregation removes at the price of the "
            "K/V hand-over (TTFT); compare ITL p99 and TTFT between the configurations at each rate."
        ]
    return [
        f"Reading: this is a {num_cores()}-core CPU box without a GPU, so it cannot show what "
        "disaggregation is for.  On a GPU, colocated prefill and decode interfere (a long prefill "
        "step stalls every running decode, which shows in ITL p99), and disaggregation removes that "
        "at the price of a K/V hand-over.  Here both configurations run 2 worker processes on the "
        "same cores, next to the gateway, the scheduler, NATS, Redis and the load generator (and "
        "whatever else the box was running: see the load averages), so the CPU is the bottleneck "
        "for all of them.  What differs between the two here: disaggregation adds the hand-over "
        "(an extra NATS hop and the copies in the K/V table below) to every TTFT and decodes every "
        "request in one process; colocated spreads decoding over both worker processes, but in "
        "each of them a prefill step stalls the running decodes.  Which effect wins on this box "
        f"depends on the moment more than on the design: the 1-minute load average went from "
        f"{load_span(results)} over these runs on 2 cores, and in trial runs on this box the "
        "ordering flipped from one run to the next (colocated ahead on TTFT and ITL in one, "
        "disaggregated ahead in another), so read differences of this size as noise.  None of this "
        "predicts the GPU result: "
        "the table is here to be re-run on GPUs (`--model`, `--device cuda`, higher `--rate`, longer "
        "prompts).  The K/V rows carry over in kind: how much of raw NATS throughput the hand-over "
        "keeps (it copies the whole payload several times: export, tensor -> bytes, split, msgpack "
        "encode and decode, join, bytearray, import), and that the demo model's K/V (2 KiB per "
        "token) is too small to matter while an 8B model's is 128 KiB per token.",
    ]
