"""Serving benchmark: open-loop Poisson load through the whole stack, disaggregated vs colocated,
and K/V hand-over MB/s beside raw NATS publish MB/s, all in one run.

    python bench/serve.py [--model DIR] [--adapter NAME=DIR ...] [--rate 2,6] [--duration 45]
                          [--prompt-len 64:128] [--output-len 32:64] [--tenants 4] [--seed 0]
                          [--configs disagg,colocated] [--colocated-workers 2]
                          [--kv-lengths 128,512,2048] [--kv-reps 5] [--raw-mb 256] [--write-docs]

Serving.  For each configuration and offered rate the bench starts a fresh stack with
``loraplex.launcher``
(its own nats-server and redis-server, the adapter store, the scheduler, the workers and the
gateway; the demo model and its 4 adapters unless ``--model``), with a tenants file of
``--tenants`` tenants (one API key each) that it writes itself:

* disagg:    ``--prefill-workers 1 --decode-workers 1`` (2 worker processes);
* colocated: ``--prefill-workers 0 --decode-workers N`` (role "both"), N = ``--colocated-workers``,
  2 by default so both configurations run the same number of worker processes on the same cores.

Per offered rate (``--rate``, comma-separated) the same seeded open-loop schedule is replayed
against each configuration: Poisson arrivals at that many requests/s for ``--duration`` seconds (a
request is sent at its time whether or not earlier ones have finished), each with a random tenant,
a random model (the base model or one of the adapters), a prompt of random token ids and ``max_tokens`` drawn from the given ranges (``ignore_eos``, so
exactly that many tokens come back).  Requests stream through ``openai.AsyncOpenAI`` with the
tenant's key.  Per request: TTFT (send -> first chunk with text), inter-token latencies (between
consecutive text chunks), E2E, completion tokens (from the usage chunk).  Completed req/s and
output tok/s are over the whole measured window (first send -> last answer).  Every model is
warmed up (one short request each) before the clock starts.  The runs go in ABBA order (rate 1:
disagg, colocated; rate 2: colocated, disagg; ...) so that a drift in the machine's load does not
favour one configuration.  ``--adapter NAME=DIR`` uploads more adapters through the gateway
(``POST /v1/adapters``, public) into every stack.

K/V hand-over.  With both stacks stopped, one nats-server started by the bench, and in this one
process: a prefill ``Worker`` and a decode ``Worker`` (the real ``loraplex.worker.runtime.Worker``
over real engines of the served model) and the real hand-over code, ``ship_kv`` on one side and
``KVReceiver`` on the other: export the prompt's blocks, tensor -> bytes, KVBegin request/reply
(the decode worker reserves blocks), KVChunk messages below the server's max_payload, reassembly,
bytes -> tensor, import into the decode worker's paged cache, first TokenDelta out.  Timed from
the export to that TokenDelta, so model compute is the only thing missing.  The same is done for
a K/V stand-in with Llama-3-8B's K/V geometry (32 layers, 8 K/V heads, head_dim 128, bfloat16:
128 KiB per token), because the demo model's K/V (2 KiB per token) never fills even one chunk.
Raw: the same number of bytes published as bare NATS messages of the same chunk size (max_payload
minus the K/V envelope room) to a subscriber on another connection of the same server, timed from
the first publish until the subscriber has every byte; and one ``--raw-mb`` stream the same way.
MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, markdown_table, num_cores, replace_doc_section, today  # noqa: E402

from loraplex.launcher import Stack, parse_up_args, start_stack  # noqa: E402
from loraplex.servers import free_port, start_nats  # noqa: E402

SECTION = "Serving: disaggregated vs colocated (bench/serve.py)"
REQUEST_TIMEOUT_S = 300.0
WARMUP_TOKENS = 4
PAUSE_S = 2.0  # idle between warm-up and each rate
RAW_SUBJECT = "loraplex.bench.raw"
RAW_REPS = 3  # raw stream repetitions (median)
# Llama-3-8B's K/V geometry: 32 layers, 8 K/V heads, head_dim 128, bf16 -> 128 KiB per token.
KV_STANDIN = {"layers": 32, "kv_heads": 8, "head_dim": 128, "dtype": "bfloat16"}

CONFIGS = ("disagg", "colocated")


# ---- arguments ---------------------------------------------------------------------------------


def int_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    a, b = int(lo), int(hi or lo)
    if not 1 <= a <= b:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI with 1 <= LO <= HI, got {text!r}")
    return a, b


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=None,
        help="HF model directory (default: the tiny demo model + 4 adapters)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="PEFT adapter to register (public) in each stack and include in the load; repeatable",
    )
    p.add_argument(
        "--rate",
        type=float_list,
        default=[2.0, 6.0],
        help="offered loads, requests/s (Poisson), comma-separated",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=45.0,
        help="seconds of arrivals per rate and configuration",
    )
    p.add_argument(
        "--prompt-len", type=int_range, default=(64, 128), help="prompt tokens, N or LO:HI"
    )
    p.add_argument("--output-len", type=int_range, default=(32, 64), help="max_tokens, N or LO:HI")
    p.add_argument("--tenants", type=int, default=4, help="tenants (one API key each), 1..8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--configs", default="disagg,colocated", help="comma-separated: disagg, colocated"
    )
    p.add_argument(
        "--colocated-workers", type=int, default=2, help="decode workers (role both) when colocated"
    )
    p.add_argument("--max-num-seqs", type=int, default=32, help="running batch per worker")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="worker device (default: cuda when available)")
    p.add_argument(
        "--kv-lengths", type=int_list, default=[128, 512, 2048], help="prompt tokens per hand-over"
    )
    p.add_argument(
        "--kv-reps", type=int, default=5, help="timed hand-overs per length (after one warm-up)"
    )
    p.add_argument("--raw-mb", type=int, default=256, help="MB of the raw NATS publish stream")
    p.add_argument("--no-kv", action="store_true", help="skip the K/V vs raw NATS part")
    p.add_argument(
        "--write-docs", action="store_true", help=f"update docs/benchmarks.md, section {SECTION!r}"
    )
    ns = p.parse_args(argv)
    ns.configs = [c.strip() for c in ns.configs.split(",") if c.strip()]
    bad = [c for c in ns.configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    if not 1 <= ns.tenants <= 8:
        p.error("--tenants must be 1..8")
    for spec in ns.adapter:
        if "=" not in spec:
            p.error(f"--adapter expects NAME=DIR, got {spec!r}")
    return ns


def stack_flags(config: str, args: argparse.Namespace) -> list[str]:
    if config == "disagg":
        return ["--prefill-workers", "1", "--decode-workers", "1"]
    return ["--prefill-workers", "0", "--decode-workers", str(args.colocated_workers)]


def config_label(config: str, args: argparse.Namespace) -> str:
    if config == "disagg":
        return "disagg (1 prefill + 1 decode)"
    n = args.colocated_workers
    return f"colocated ({n} worker{'s' if n != 1 else ''}, role both)"


# ---- machine -----------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# ---- tenants and workload ----------------------------------------------------------------------

TENANT_NAMES = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]


@dataclass(frozen=True)
class TenantKey:
    name: str
    api_key: str


def write_tenants(path: Path, n: int) -> list[TenantKey]:
    tenants = [
        TenantKey(name, f"sk-bench-{name}-{secrets.token_hex(8)}") for name in TENANT_NAMES[:n]
    ]
    doc = {"tenants": [{"name": t.name, "api_key": t.api_key, "weight": 1.0} for t in tenants]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return tenants


@dataclass(frozen=True)
class Planned:
    index: int
    at: float  # seconds after the start of the run
    tenant: int
    model: int  # index into the models list (0 = base)
    prompt: list[int]
    max_tokens: int


def plan_requests(
    args: argparse.Namespace, rate: float, seed: int, num_models: int, vocab: tuple[int, int]
) -> list[Planned]:
    """The seeded open-loop schedule at ``rate``; the same for every configuration."""
    rng = random.Random(seed)
    out: list[Planned] = []
    t = rng.expovariate(rate)
    while t < args.duration:
        prompt = [rng.randrange(*vocab) for _ in range(rng.randint(*args.prompt_len))]
        out.append(
            Planned(
                len(out),
                t,
                rng.randrange(args.tenants),
                rng.randrange(num_models),
                prompt,
                rng.randint(*args.output_len),
            )
        )
        t += rng.expovariate(rate)
    return out


def token_range(model_dir: str) -> tuple[int, int]:
    """Ordinary token ids to draw prompts from (clear of the low special ids)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    vocab = int(cfg.get("vocab_size", 1024))
    lo = min(16, vocab // 4)
    return lo, min(vocab, 32000)


# ---- one stack ---------------------------------------------------------------------------------


@dataclass
class Record:
    tenant: int
    model: int
    sent: float
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float | None = None
    tokens: int = 0
    done: float | None = None
    error: str | None = None


@dataclass
class ServeResult:
    config: str
    label: str
    rate: float
    records: list[Record]
    window_s: float
    startup_s: float
    load_before: str
    load_after: str


async def stream_one(
    client: openai.AsyncOpenAI, model: str, prompt: list[int], max_tokens: int, rec: Record
) -> None:
    last: float | None = None
    try:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    rec.ttft = now - rec.sent
                else:
                    rec.itls.append(now - last)
                last = now
            if chunk.usage is not None:
                rec.tokens = chunk.usage.completion_tokens
        rec.done = time.perf_counter()
        rec.e2e = rec.done - rec.sent
        if rec.ttft is None:
            rec.error = "no text in the stream"
    except Exception as e:  # every failure is counted; the run goes on
        rec.done = time.perf_counter()
        rec.error = f"{type(e).__name__}: {e}"[:200]


async def replay(
    base_url: str, tenants: list[TenantKey], models: list[str], plan: list[Planned]
) -> tuple[list[Record], float, str, str]:
    """Warm up, then the plan: (records, window seconds, load before, load after)."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    clients = [
        openai.AsyncOpenAI(
            base_url=base_url + "/v1",
            api_key=t.api_key,
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
            http_client=httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S),
        )
        for t in tenants
    ]
    try:
        # Warm-up: every model once (adapters paged in on the workers), not timed.
        warm = [Record(0, i, time.perf_counter()) for i in range(len(models))]
        await asyncio.gather(
            *(
                stream_one(clients[0], m, [20, 21, 22, 23], WARMUP_TOKENS, r)
                for m, r in zip(models, warm, strict=True)
            )
        )
        failed = [(models[r.model], r.error) for r in warm if r.error]
        if failed:
            raise RuntimeError(f"warm-up failed: {failed}")
        await asyncio.sleep(PAUSE_S)
        load_before = load_average()
        records: list[Record] = []
        tasks = []
        start = time.perf_counter()
        for p in plan:
            delay = start + p.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = Record(p.tenant, p.model, time.perf_counter())
            records.append(rec)
            call = stream_one(clients[p.tenant], models[p.model], p.prompt, p.max_tokens, rec)
            tasks.append(asyncio.create_task(call))
        await asyncio.gather(*tasks)
        end = max((r.done or start) for r in records) if records else time.perf_counter()
        return records, end - start, load_before, load_average()
    finally:
        for c in clients:
            await c.close()


def list_models(base_url: str, api_key: str) -> list[str]:
    """Base model first, then its adapters (sorted)."""
    r = httpx.get(
        base_url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    r.raise_for_status()
    data = r.json()["data"]
    base = [m["id"] for m in data if not m.get("parent")]
    adapters = sorted(m["id"] for m in data if m.get("parent"))
    return base[:1] + adapters


def register_adapters(base_url: str, owner: TenantKey, specs: list[str]) -> None:
    for spec in specs:
        name, _, path = spec.partition("=")
        d = Path(path)
        files = [
            (
                "files",
                (
                    "adapter_config.json",
                    (d / "adapter_config.json").read_bytes(),
                    "application/json",
                ),
            ),
            (
                "files",
                (
                    "adapter_model.safetensors",
                    (d / "adapter_model.safetensors").read_bytes(),
                    "application/octet-stream",
                ),
            ),
        ]
        r = httpx.post(
            base_url + "/v1/adapters",
            headers={"Authorization": f"Bearer {owner.api_key}"},
            data={"name": name, "visibility": "public", "replace": "true"},
            files=files,
            timeout=120,
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(
                f"registering adapter {name!r} failed: {r.status_code} {r.text[:300]}"
            )


def run_config(
    config: str,
    rate_index: int,
    args: argparse.Namespace,
    tmp: Path,
    shared: dict,  # type: ignore[type-arg]
) -> ServeResult:
    """A fresh stack for ``config``, one rate's schedule replayed against it."""
    rate = args.rate[rate_index]
    run_dir = tmp / f"{config}-{rate_index}"
    run_dir.mkdir()
    tenants = write_tenants(run_dir / "tenants.json", args.tenants)
    flags = [
        "--port",
        str(free_port()),
        "--run-dir",
        str(run_dir),
        "--tenants",
        str(run_dir / "tenants.json"),
    ]
    flags += [
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--dtype",
        args.dtype,
        *stack_flags(config, args),
    ]
    if args.model:
        flags += ["--model", args.model]
    if args.device:
        flags += ["--device", args.device]
    stack = Stack(run_dir)
    label = config_label(config, args)
    print(
        f"\n== {rate:g} req/s, {label}: starting the stack ({' '.join(stack_flags(config, args))})",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        base, model_dir, _ = start_stack(parse_up_args(flags), stack)
        startup = time.perf_counter() - t0
        if args.adapter:
            register_adapters(base, tenants[0], args.adapter)
        models = list_models(base, tenants[0].api_key)
        if "plans" not in shared:
            vocab = token_range(model_dir)
            shared["plans"] = [
                plan_requests(args, rate, args.seed * 1000 + i, len(models), vocab)
                for i, rate in enumerate(args.rate)
            ]
            shared["models"], shared["model_dir"] = models, model_dir
        elif models != shared["models"]:
            raise RuntimeError(
                f"models differ between configurations: {models} vs {shared['models']}"
            )
        plan = shared["plans"][rate_index]
        print(
            f"   up in {startup:.1f}s; models {models}; {len(plan)} requests over "
            f"{args.duration:g}s (load average {load_average()})",
            flush=True,
        )
        records, window, before, after = asyncio.run(replay(base, tenants, models, plan))
        stack.check_alive()
    finally:
        stack.stop()
    return ServeResult(config, label, rate, records, window, startup, before, after)


# ---- serving statistics ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.0f}"


def summarize(res: ServeResult) -> dict[str, float]:
    ok = [r for r in res.records if r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [x for r in ok for x in r.itls]
    tpot = [
        (r.e2e - r.ttft) / (r.tokens - 1)
        for r in ok
        if r.e2e and r.ttft is not None and r.tokens > 1
    ]
    return {
        "sent": len(res.records),
        "ok": len(ok),
        "errors": len(res.records) - len(ok),
        "req_s": len(ok) / res.window_s if res.window_s else float("nan"),
        "tok_s": sum(r.tokens for r in ok) / res.window_s if res.window_s else float("nan"),
        "ttft50": pct(ttft, 50),
        "ttft99": pct(ttft, 99),
        "itl50": pct(itl, 50),
        "itl99": pct(itl, 99),
        "tpot": statistics.fmean(tpot) if tpot else float("nan"),
        "e2e50": pct([r.e2e for r in ok if r.e2e is not None], 50),
    }


def by_rate(results: list[ServeResult]) -> list[ServeResult]:
    """Rows of one offered rate next to each other (configurations in run order within a rate)."""
    return sorted(results, key=lambda r: r.rate)


def one_min(load: str) -> str:
    return load.split(" / ")[0]


def serve_table(results: list[ServeResult]) -> str:
    headers = [
        "offered req/s",
        "configuration",
        "sent",
        "errors",
        "req/s",
        "output tok/s",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "ITL p50 (ms)",
        "ITL p99 (ms)",
        "TPOT mean (ms)",
        "E2E p50 (ms)",
        "load avg",
    ]
    rows = []
    for res in by_rate(results):
        s = summarize(res)
        rows.append(
            [
                f"{res.rate:g}",
                res.label,
                f"{s['sent']}",
                f"{s['errors']}",
                f"{s['req_s']:.2f}",
                f"{s['tok_s']:.1f}",
                ms(s["ttft50"]),
                ms(s["ttft99"]),
                ms(s["itl50"]),
                ms(s["itl99"]),
                ms(s["tpot"]),
                ms(s["e2e50"]),
                f"{one_min(res.load_before)} -> {one_min(res.load_after)}",
            ]
        )
    return markdown_table(headers, rows)


def tenant_table(results: list[ServeResult], tenants: int) -> str:
    """TTFT p50 per tenant and configuration (the fairness policy shares the workers among them)."""
    headers = [
        "offered req/s",
        "configuration",
        *[f"{TENANT_NAMES[i]}: n / TTFT p50 (ms)" for i in range(tenants)],
    ]
    rows = []
    for res in by_rate(results):
        cells = [f"{res.rate:g}", res.label]
        for i in range(tenants):
            mine = [
                r for r in res.records if r.tenant == i and r.error is None and r.ttft is not None
            ]
            cells.append(f"{len(mine)} / {ms(pct([r.ttft for r in mine], 50))}")
        rows.append(cells)
    return markdown_table(headers, rows)


def error_lines(results: list[ServeResult]) -> list[str]:
    lines = []
    for res in results:
        errs: dict[str, int] = {}
        for r in res.records:
            if r.error:
                errs[r.error] = errs.get(r.error, 0) + 1
        for msg, n in sorted(errs.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"- {res.label} at {res.rate:g} req/s: {n} x `{msg}`")
    return lines


# ---- K/V hand-over vs raw NATS -----------------------------------------------------------------


@dataclass
class KVRow:
    model: str
    tokens: int
    bytes: int
    chunks: int
    kv_s: list[float] = field(default_factory=list)  # export -> first TokenDelta from the decoder
    send_s: list[float] = field(default_factory=list)  # export -> ship_kv returned (sender side)
    export_s: list[float] = field(default_factory=list)  # export_blocks alone
    raw_s: list[float] = field(default_factory=list)  # same bytes as bare NATS messages


def write_standin_model(out: Path) -> Path:
    """A random model with Llama-3-8B's K/V geometry (tiny everywhere else: only its K/V is used)."""
    from loraplex.demo import TinyModelSpec, write_demo_tokenizer, write_random_model

    vocab = write_demo_tokenizer(out, 1024, model_max_length=8192)
    spec = TinyModelSpec(
        hidden_size=64,
        intermediate_size=64,
        num_layers=KV_STANDIN["layers"],
        num_heads=KV_STANDIN["kv_heads"],
        num_kv_heads=KV_STANDIN["kv_heads"],
        head_dim=KV_STANDIN["head_dim"],
        vocab_size=vocab,
        max_position_embeddings=8192,
    )
    write_random_model(out, spec)
    return out


class RawSink:
    """A subscriber on its own connection that counts delivered bytes."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.done = asyncio.Event()

    async def start(self, url: str) -> None:
        import nats

        self.nc = await nats.connect(url, name="bench-raw-sink")
        # As large as needed: a slow-consumer drop would show as a hang, not as a number.
        await self.nc.subscribe(
            RAW_SUBJECT, cb=self._on_msg, pending_bytes_limit=-1, pending_msgs_limit=-1
        )
        await self.nc.flush()

    async def _on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.received += len(msg.data)
        if self.received >= self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.received, self.target = 0, n
        self.done.clear()


async def raw_publish(pub, sink: RawSink, nbytes: int, chunk: int, block: bytes) -> float:  # type: ignore[no-untyped-def]
    """Publish ``nbytes`` as messages of ``chunk`` bytes, flush, wait until all arrived; seconds."""
    sink.expect(nbytes)
    t0 = time.perf_counter()
    left = nbytes
    while left > 0:
        n = min(chunk, left)
        await pub.publish(RAW_SUBJECT, block[:n] if n < chunk else block)
        left -= n
    await pub.flush()
    await asyncio.wait_for(sink.done.wait(), timeout=120)
    return time.perf_counter() - t0


async def kv_vs_raw(
    args: argparse.Namespace, served_model: str, tmp: Path
) -> tuple[list[KVRow], float, int, int]:
    """Hand-over timings per (model, length), raw NATS timings, raw stream MB/s, chunk size."""
    import nats

    from loraplex.bus import Bus
    from loraplex.config import EngineConfig
    from loraplex.engine.llm_engine import KVHandoff, LLMEngine
    from loraplex.kvcache.block_allocator import blocks_for
    from loraplex.protocol import RequestProgress, SamplingSpec, Subjects, SubmitRequest, TokenDelta
    from loraplex.worker.kv_sender import ship_kv
    from loraplex.worker.kv_transfer import chunk_size_for
    from loraplex.worker.runtime import Active, Worker
    from loraplex.worker.settings import WorkerSettings

    logging.getLogger("loraplex.bus").setLevel(logging.ERROR)  # workers stopping say "disconnected"
    server = start_nats(tmp / "kv-nats")
    rows: list[KVRow] = []
    try:
        url = server.url
        pub = await nats.connect(url, name="bench-raw-pub")
        sink = RawSink()
        await sink.start(url)
        chunk = chunk_size_for(int(pub.max_payload))
        block = os.urandom(chunk)
        # Raw stream first (warm-up: one chunk).
        await raw_publish(pub, sink, chunk, chunk, block)
        raw_total = args.raw_mb * 10**6
        stream_s = [await raw_publish(pub, sink, raw_total, chunk, block) for _ in range(RAW_REPS)]
        raw_stream_mbs = raw_total / 1e6 / statistics.median(stream_s)
        print(
            f"   raw NATS stream: {raw_stream_mbs:.0f} MB/s ({args.raw_mb} MB in {chunk}-byte messages)",
            flush=True,
        )

        standin = write_standin_model(tmp / "kv-standin")
        targets = [
            (Path(served_model).name + " (served)", served_model, args.dtype, args.device),
            ("Llama-3-8B K/V geometry, bf16", str(standin), KV_STANDIN["dtype"], args.device),
        ]
        listener = await Bus.connect(url, "bench-kv-listener")
        arrived: dict[str, asyncio.Future] = {}  # type: ignore[type-arg]

        async def on_delta(msg: TokenDelta) -> None:
            fut = arrived.get(msg.request_id)
            if fut is not None and not fut.done():
                fut.set_result(None)

        async def on_progress(msg: RequestProgress) -> None:
            fut = arrived.get(msg.request_id)
            if msg.event in ("failed", "error") and fut is not None and not fut.done():
                fut.set_exception(
                    RuntimeError(f"hand-over of {msg.request_id} failed: {msg.message}")
                )

        await listener.subscribe(Subjects.stream("kvbench"), on_delta, TokenDelta)
        await listener.subscribe(Subjects.USAGE, on_progress, RequestProgress)
        await listener.flush()

        for label, model_dir, dtype, device in targets:
            max_pos = json.loads((Path(model_dir) / "config.json").read_text()).get(
                "max_position_embeddings", 2048
            )
            lengths = sorted({min(n, int(max_pos) - 1) for n in args.kv_lengths})
            max_len = max(lengths) + 1
            cfg = EngineConfig(
                max_num_seqs=4,
                max_num_batched_tokens=max(4096, max_len),
                max_model_len=max_len,
                num_kv_blocks=blocks_for(max_len, 16) + 1,
                max_loras=1,
                max_lora_rank=8,
            )
            engines = [LLMEngine(model_dir, cfg, dtype=dtype, device=device) for _ in range(2)]
            workers = []
            for role, engine in zip(("prefill", "decode"), engines, strict=True):
                s = WorkerSettings(
                    role, model_dir, url, None, f"kvbench-{role}", dtype=dtype, kv_timeout_s=60.0
                )
                w = Worker(s, engine, None)
                await w.start()
                workers.append(w)
            prefill, decode = workers
            data = prefill.engine.kv_cache.data
            data.copy_(torch.randn(data.shape, dtype=torch.float32).to(data.dtype))  # not all zeros
            vocab = prefill.engine.model_config.vocab_size
            try:
                for n_tok in lengths:
                    row = None
                    for rep in range(args.kv_reps + 1):  # rep 0: warm-up
                        rid = f"kv-{len(rows)}-{n_tok}-{rep}-{secrets.token_hex(3)}"
                        prompt = [(16 + i) % vocab for i in range(n_tok)]
                        sub = SubmitRequest(
                            rid,
                            "bench",
                            "kvbench",
                            prompt,
                            SamplingSpec(max_tokens=1, ignore_eos=True),
                        )
                        req = Active(sub, None, decode_worker=decode.id)
                        blocks = prefill.engine.allocator.allocate(
                            blocks_for(n_tok, cfg.block_size)
                        )
                        prefill.active[rid] = req
                        arrived[rid] = asyncio.get_running_loop().create_future()
                        t0 = time.perf_counter()
                        payload = prefill.engine.kv_cache.export_blocks(blocks)
                        t_export = time.perf_counter() - t0
                        await ship_kv(prefill, req, KVHandoff(payload, 17, n_tok))
                        t_send = time.perf_counter() - t0
                        try:
                            await asyncio.wait_for(arrived[rid], timeout=120)
                        finally:
                            arrived.pop(rid, None)
                        t_kv = time.perf_counter() - t0
                        prefill.engine.allocator.free(blocks)
                        nbytes = payload.numel() * payload.element_size()
                        t_raw = await raw_publish(pub, sink, nbytes, chunk, block)
                        if row is None:
                            row = KVRow(label, n_tok, nbytes, -(-nbytes // chunk))
                        elif rep > 0:
                            row.kv_s.append(t_kv)
                            row.send_s.append(t_send)
                            row.export_s.append(t_export)
                            row.raw_s.append(t_raw)
                        del payload
                    assert row is not None
                    rows.append(row)
                    print(
                        f"   {label}, {n_tok} tokens ({row.bytes / 1e6:.1f} MB, {row.chunks} chunk(s)): "
                        f"K/V {row.bytes / 1e6 / statistics.median(row.kv_s):.0f} MB/s, "
                        f"raw {row.bytes / 1e6 / statistics.median(row.raw_s):.0f} MB/s",
                        flush=True,
                    )
            finally:
                for w in workers:
                    await w.stop()
                del engines, workers, prefill, decode, data
        await listener.close()
        await sink.nc.close()
        await pub.close()
        return rows, raw_stream_mbs, chunk, int(pub.max_payload)
    finally:
        server.stop()


def kv_table(rows: list[KVRow]) -> str:
    headers = [
        "K/V of",
        "prompt tokens",
        "payload (MB)",
        "chunks",
        "hand-over p50 (ms)",
        "of which export (ms)",
        "hand-over MB/s",
        "sender-side MB/s",
        "raw NATS MB/s (same bytes)",
        "K/V / raw",
    ]
    out = []
    for r in rows:
        kv, send, export, raw = (
            statistics.median(x) for x in (r.kv_s, r.send_s, r.export_s, r.raw_s)
        )
        mb = r.bytes / 1e6
        out.append(
            [
                r.model,
                f"{r.tokens}",
                f"{mb:.2f}",
                f"{r.chunks}",
                f"{kv * 1000:.1f}",
                f"{export * 1000:.1f}",
                f"{mb / kv:.0f}",
                f"{mb / send:.0f}",
                f"{mb / raw:.0f}",
                f"{raw / kv:.2f}",
            ]
        )
    return markdown_table(headers, out)


# ---- report ------------------------------------------------------------------------------------


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
            "`ship_kv` (prefill `Worker`) and `KVReceiver` (decode `Worker`) over real engines: export "
            "blocks, tensor -> bytes, KVBegin request/reply (reserve), KVChunk messages, reassembly, "
            "bytes -> tensor, import into the paged cache, first TokenDelta out; everything but the "
            "model's prefill.  *Export*: `export_blocks` alone (in the servers it runs inside the "
            "prefill step).  *Sender-side*: export until `ship_kv` returned (serialized, published, "
            "flushed).  Raw: the payload's bytes as bare messages of the same size, until the "
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


# ---- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = load_average()
    gpu = gpu_name()
    print(
        f"machine: {cpu_model()}, {num_cores()} cores, {gpu or 'no GPU'}; load average {load_start}",
        flush=True,
    )
    results: list[ServeResult] = []
    shared: dict = {}  # type: ignore[type-arg]
    kv = None
    with tempfile.TemporaryDirectory(prefix="loraplex-serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for i in range(len(args.rate)):
            # ABBA order (odd rates run the configurations in reverse) against load drift.
            for config in args.configs if i % 2 == 0 else args.configs[::-1]:
                res = run_config(config, i, args, tmp, shared)
                results.append(res)
                s = summarize(res)
                print(
                    f"   {res.rate:g} req/s: {s['ok']}/{s['sent']} ok, {s['req_s']:.2f} req/s, "
                    f"{s['tok_s']:.1f} tok/s, TTFT p50 {ms(s['ttft50'])} ms, ITL p50 {ms(s['itl50'])} ms "
                    f"(load average {res.load_after})",
                    flush=True,
                )
        if not args.no_kv:
            print("\n== K/V hand-over vs raw NATS publish", flush=True)
            model_dir = shared.get("model_dir") or args.model
            if model_dir is None:  # no serving run: write the demo model here
                from loraplex.demo import write_demo_model

                model_dir = str(write_demo_model(tmp / "demo-model", num_adapters=0).model_dir)
            kv = asyncio.run(kv_vs_raw(args, model_dir, tmp))
    total = time.perf_counter() - started
    load_end = load_average()
    models, plans = shared.get("models", []), shared.get("plans", [])
    if results:
        print()
        print(serve_table(results))
        print()
        print("\n".join(comparison_lines(results)))
        print()
        print(tenant_table(results, args.tenants))
        for line in error_lines(results):
            print(line)
    if kv is not None:
        print()
        print(kv_table(kv[0]))
        print(f"\nraw NATS publish stream: {kv[1]:.0f} MB/s")
    print(f"\ntotal {total:.0f}s; load average {load_end}")
    if args.write_docs:
        replace_doc_section(
            SECTION, docs_body(args, argv, results, kv, models, plans, total, load_start, load_end)
        )
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
