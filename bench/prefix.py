"""Shared system prompts: loraplex with automatic prefix caching vs the same engine without it.

    python bench/prefix.py [--adapters 4] [--waves 8] [--per-wave 8] [--prefix-len 512]
                           [--suffix-len 32] [--output-len 16] [--hidden 512] [--layers 6]
                           [--repeats 2] [--mode offline|live|both] [--write-docs]

Each adapter (a tenant's fine-tune) has its own system prompt of ``--prefix-len`` random token
ids; every request is its adapter's system prompt + ``--suffix-len`` unique ids, and decodes
``--output-len`` tokens greedily (EOS ignored).  Requests arrive in ``--waves`` waves of
``--per-wave`` (one ``LLM.generate`` call each, adapters round robin), so later waves find the
earlier ones' blocks, as a server's later requests would.  Both engines get the same waves; the
run checks that their tokens are equal.  Reported: wall time over all waves, generated tokens/s,
prompt tokens whose K/V were computed vs reused, and the mean wall time of a wave.  With
``--repeats N`` the two engines alternate N times and the fastest run of each counts.

``--mode live`` (see ``prefixlive.py``) starts ``loraplex up`` with two colocated workers twice,
with and without ``--prefix-routing``, and sends the same stream of requests over more system
prompts than one worker's KV cache holds (``--live-*`` flags).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prefixlive  # noqa: E402
from common import machine_line, markdown_table, publish, today  # noqa: E402
from enginebench.workload import model_spec  # noqa: E402

from loraplex import LLM, SamplingParams  # noqa: E402
from loraplex.tooling.demo import (  # noqa: E402
    ALL_MODULES,
    write_demo_tokenizer,
    write_random_adapter,
    write_random_model,
)

SECTION = "Prefix caching (bench/prefix.py)"
LIVE_SECTION = "Prefix-aware placement on the live stack (bench/prefix.py --mode live)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--waves", type=int, default=8)
    p.add_argument("--per-wave", type=int, default=8)
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--mode",
        choices=["offline", "live", "both"],
        default="offline",
        help="offline: the engine with/without caching; live: placement on a 2-worker stack",
    )
    p.add_argument("--live-prefixes", type=int, default=12, help="live: distinct system prompts")
    p.add_argument("--live-prefix-len", type=int, default=256, help="live: system prompt tokens")
    p.add_argument("--live-requests", type=int, default=96)
    p.add_argument("--live-concurrency", type=int, default=4, help="live: requests in flight")
    p.add_argument(
        "--live-kv-blocks", type=int, default=180, help="live: KV blocks per worker (16 tokens)"
    )
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def build(root: Path, a: argparse.Namespace) -> tuple[Path, dict[str, Path], int]:
    model_dir = root / "model"
    vocab = write_demo_tokenizer(model_dir, 2048)
    spec = model_spec(a.hidden, a.layers, vocab, max_positions=2048)
    write_random_model(model_dir, spec)
    paths = {}
    for i in range(a.adapters):
        paths[f"tenant-{i}"] = root / f"tenant-{i}"
        write_random_adapter(
            paths[f"tenant-{i}"], spec, rank=16, alpha=32, targets=ALL_MODULES, seed=i + 1
        )
    return model_dir, paths, vocab


def workload(a: argparse.Namespace, names: list[str], vocab: int) -> list[list[tuple]]:
    gen = torch.Generator().manual_seed(7)
    system = {n: torch.randint(4, vocab, (a.prefix_len,), generator=gen).tolist() for n in names}
    waves, i = [], 0
    for _ in range(a.waves):
        wave = []
        for _ in range(a.per_wave):
            name = names[i % len(names)]
            suffix = torch.randint(4, vocab, (a.suffix_len,), generator=gen).tolist()
            wave.append((system[name] + suffix, name))
            i += 1
        waves.append(wave)
    return waves


def run(llm: LLM, waves: list[list[tuple]], output_len: int) -> tuple[float, list, list[float]]:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    tokens, per_wave = [], []
    start = time.perf_counter()
    for wave in waves:
        t0 = time.perf_counter()
        outs = llm.generate([p for p, _ in wave], params, lora=[n for _, n in wave])
        per_wave.append(time.perf_counter() - t0)
        tokens += [o.token_ids for o in outs]
    return time.perf_counter() - start, tokens, per_wave


def offline(
    a: argparse.Namespace, argv: list[str], model_dir: Path, paths: dict[str, Path], vocab: int
) -> bool:
    rows = []
    waves = workload(a, list(paths), vocab)
    best: dict[bool, tuple] = {}
    for rep in range(a.repeats):
        for caching in (True, False) if rep % 2 == 0 else (False, True):
            llm = LLM(
                model_dir,
                dtype="float32",
                device="cpu",
                max_loras=a.adapters,
                max_lora_rank=16,
                max_num_seqs=a.per_wave,
                max_model_len=a.prefix_len + a.suffix_len + a.output_len + 16,
                enable_prefix_caching=caching,
            )
            for name, path in paths.items():
                llm.add_lora(name, path)
            llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2), lora=list(paths)[0])
            sched = llm.engine.scheduler
            hit0, query0 = sched.prefix_hit_tokens, sched.prefix_query_tokens
            seconds, tokens, per_wave = run(llm, waves, a.output_len)
            hit, query = sched.prefix_hit_tokens - hit0, sched.prefix_query_tokens - query0
            print(f"caching={caching}: {seconds:.2f} s, reused {hit}/{query} prompt tokens")
            if caching not in best or seconds < best[caching][0]:
                best[caching] = (seconds, tokens, per_wave, hit, query)
    same = best[True][1] == best[False][1]
    generated = a.waves * a.per_wave * a.output_len
    for caching in (True, False):
        seconds, _, per_wave, hit, query = best[caching]
        rows.append(
            [
                "loraplex, prefix caching on" if caching else "loraplex, prefix caching off (peer)",
                f"{seconds:.2f}",
                f"{generated / seconds:.0f}",
                f"{query - hit:,} / {hit:,}",
                f"{1e3 * sum(per_wave[1:]) / max(1, len(per_wave) - 1):.0f}",
            ]
        )
    speedup = best[False][0] / best[True][0]
    table = markdown_table(
        [
            "engine",
            "wall s (all waves)",
            "generated tok/s",
            "prompt tokens computed / reused",
            "mean wave ms (waves 2..)",
        ],
        rows,
    )
    body = "\n".join(
        [
            f"Command: `{' '.join(['python bench/prefix.py', *argv])}`",
            f"({today()}; {machine_line()}).",
            "",
            f"{a.adapters} adapters (rank 16, all targets), each with its own {a.prefix_len}-token "
            f"system prompt; {a.waves} waves of {a.per_wave} requests (prompt = system prompt + "
            f"{a.suffix_len} unique tokens, {a.output_len} output tokens, greedy); random Llama "
            f"(hidden {a.hidden}, {a.layers} layers), fp32, CPU. Fastest of {a.repeats} "
            "alternating runs per engine.",
            "",
            table,
            "",
            f"- Prefix caching: {speedup:.2f}x faster over the whole run; greedy tokens "
            + ("identical to the peer's." if same else "**differ from the peer's**."),
        ]
    )
    print()
    publish(SECTION, body, a.write_docs)
    return same


def live(a: argparse.Namespace, argv: list[str], model_dir: Path, vocab: int, tmp: Path) -> None:
    prompts = prefixlive.plan(a, vocab)
    results = []
    for routing in (True, False):
        print(f"live stack, prefix routing {'on' if routing else 'off'} ...", flush=True)
        results.append(prefixlive.run_one(routing, a, model_dir, tmp, prompts))
        r = results[-1]
        print(f"  {r.seconds:.1f} s, hits {r.hit}, served {r.served}", flush=True)
    table = markdown_table(
        [
            "placement",
            "wall s",
            "TTFT p50 ms",
            "prompt tokens reused",
            "requests per worker",
        ],
        prefixlive.live_rows(results),
    )
    body = "\n".join(
        [
            f"Command: `{' '.join(['python bench/prefix.py', *argv])}`",
            f"({today()}; {machine_line()}).",
            "",
            f"`loraplex up` with two colocated workers (`--prefill-workers 0 --decode-workers 2`), "
            f"{a.live_kv_blocks} KV blocks of 16 tokens per worker, prefix caching on in both; "
            f"{a.live_requests} requests drawn at random from {a.live_prefixes} system prompts of "
            f"{a.live_prefix_len} tokens (+16 unique tokens, {a.output_len} output tokens), "
            f"{a.live_concurrency} in flight, streamed through the `openai` client; random Llama "
            f"(hidden {a.hidden}, {a.layers} layers), fp32, CPU. The peer is the same stack with "
            "`--no-prefix-routing` (placement by adapter residency and load only). Reuse is read "
            "from the workers' `loraplex_worker_prefix_cache_*_tokens` on `/metrics`.",
            "",
            table,
        ]
    )
    print()
    publish(LIVE_SECTION, body, a.write_docs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="loraplex-prefix-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir, paths, vocab = build(tmp, a)
        if a.mode in ("offline", "both"):
            ok = offline(a, argv, model_dir, paths, vocab)
        if a.mode in ("live", "both"):
            live(a, argv, model_dir, vocab, tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
