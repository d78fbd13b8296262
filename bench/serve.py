"""Serving benchmark: open-loop Poisson load through the whole stack, disaggregated vs colocated,
and K/V hand-over MB/s beside raw NATS publish MB/s, all in one run.

    python bench/serve.py [--model DIR] [--adapter NAME=DIR ...] [--rate 2,6] [--duration 45]
                          [--prompt-len 64:128] [--output-len 32:64] [--tenants 4] [--seed 0]
                          [--configs disagg,colocated] [--colocated-workers 2]
                          [--kv-lengths 128,512,2048] [--kv-reps 5] [--raw-mb 256] [--write-docs]

Serving.  For each configuration and offered rate the bench starts a fresh stack with
``loraplex.tooling.launcher``
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
over real engines of the served model) and the real hand-over code, ``KVSender.ship`` on one side
and ``KVReceiver`` on the other: export the prompt's blocks, tensor -> bytes, KVBegin request/reply
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

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, num_cores, replace_doc_section  # noqa: E402
from servebench.kv_transfer import kv_vs_raw  # noqa: E402
from servebench.load import ServeResult  # noqa: E402
from servebench.machine import gpu_name, load_average  # noqa: E402
from servebench.options import parse_args  # noqa: E402
from servebench.report import SECTION, comparison_lines, docs_body  # noqa: E402
from servebench.stacks import run_config  # noqa: E402
from servebench.stats import ms, summarize  # noqa: E402
from servebench.tables import error_lines, kv_table, serve_table, tenant_table  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, __doc__)
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
                from loraplex.tooling.demo import write_demo_model

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
