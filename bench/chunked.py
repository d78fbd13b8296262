"""Chunked prefill with mixed steps: how long running requests stall when a long prompt arrives.

    python bench/chunked.py [--running 8] [--long-prompt 2048] [--budgets 4096,512,256]
                            [--hidden 512] [--layers 6] [--write-docs]

``--running`` requests (64-token prompts) are decoding when one ``--long-prompt``-token request
arrives.  With a token budget at least as large as the prompt, the prompt is prefilled in one
step and every running request waits for it (the peer: no chunking); with smaller budgets it is
prefilled in chunks, and the running requests decode in the same steps.  Reported per budget:
the running requests' inter-token latency (p50, p99, max, over the window from the long prompt's
arrival to its first token), the long prompt's time to first token, and total throughput.
Greedy tokens must be identical across budgets.  Engine-level (``LLMEngine.step``), CPU, fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402
from enginebench.workload import model_spec  # noqa: E402

from loraplex import LLM, SamplingParams  # noqa: E402
from loraplex.tooling.demo import write_demo_tokenizer, write_random_model  # noqa: E402

SECTION = "Chunked prefill and mixed steps (bench/chunked.py)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--running", type=int, default=8)
    p.add_argument("--long-prompt", type=int, default=2048)
    p.add_argument("--budgets", default="4096,512,256")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    a.budgets = [int(x) for x in a.budgets.split(",")]
    return a


def build(root: Path, a: argparse.Namespace) -> Path:
    vocab = write_demo_tokenizer(root, 2048)
    spec = model_spec(a.hidden, a.layers, vocab, max_positions=a.long_prompt + 256)
    write_random_model(root, spec)
    return root


def run(model: Path, a: argparse.Namespace, budget: int) -> dict:  # type: ignore[type-arg]
    llm = LLM(
        model,
        dtype="float32",
        device="cpu",
        max_num_seqs=a.running + 1,
        max_num_batched_tokens=budget,
        max_model_len=a.long_prompt + 128,
        enable_prefix_caching=False,
    )
    eng = llm.engine
    gen = torch.Generator().manual_seed(3)
    vocab = eng.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=96, ignore_eos=True)
    for i in range(a.running):
        eng.add_request(f"run{i}", torch.randint(4, vocab, (64,), generator=gen).tolist(), params)
    long_prompt = torch.randint(4, vocab, (a.long_prompt,), generator=gen).tolist()
    times: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {}
    start = time.perf_counter()
    arrived = first = None
    while eng.has_unfinished():
        outs = eng.step()
        now = time.perf_counter()
        for o in outs:
            times.setdefault(o.request_id, []).append(now)
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
        if arrived is None and len(times.get("run0", [])) == 8:  # all running, decoding
            eng.add_request("long", long_prompt, SamplingParams(temperature=0, max_tokens=8))
            arrived = now
        if first is None and "long" in times:
            first = times["long"][0]
    total = time.perf_counter() - start
    assert arrived is not None and first is not None
    gaps = [
        b - a_
        for rid, ts in times.items()
        if rid != "long"
        for a_, b in zip(ts, ts[1:], strict=False)
        if arrived <= b <= first + 1e-9
    ]
    return {
        "budget": budget,
        "gaps": gaps,
        "ttft": first - arrived,
        "tok_s": sum(len(t) for t in tokens.values()) / total,
        "tokens": tokens,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraplex-chunked-bench-") as tmp:
        model = build(Path(tmp), a)
        results = []
        for budget in a.budgets:
            r = run(model, a, budget)
            g = sorted(r["gaps"])
            print(
                f"budget {budget}: ITL max {1e3 * g[-1]:.0f} ms, long TTFT {1e3 * r['ttft']:.0f} ms",
                flush=True,
            )
            results.append(r)
    same = all(r["tokens"] == results[0]["tokens"] for r in results)
    rows = []
    for r in results:
        g = sorted(r["gaps"])
        whole = r["budget"] >= a.long_prompt
        rows.append(
            [
                f"{r['budget']}"
                + (" (peer: prompt in one step)" if whole else " (chunked, mixed)"),
                f"{1e3 * statistics.median(g):.0f}",
                f"{1e3 * g[min(len(g) - 1, int(0.99 * len(g)))]:.0f}",
                f"{1e3 * g[-1]:.0f}",
                f"{1e3 * r['ttft']:.0f}",
                f"{r['tok_s']:.0f}",
            ]
        )
    body = "\n".join(
        [
            f"Command: `{' '.join(['python bench/chunked.py', *argv])}`",
            f"({today()}; {machine_line()}).",
            "",
            f"{a.running} requests (64-token prompts, 96 output tokens) are decoding when a "
            f"{a.long_prompt}-token prompt arrives; random Llama (hidden {a.hidden}, {a.layers} "
            "layers), fp32, CPU, `LLMEngine.step` in a loop. ITL: gaps between the running "
            "requests' tokens from the long prompt's arrival to its first token.",
            "",
            markdown_table(
                [
                    "max_num_batched_tokens",
                    "ITL p50 ms",
                    "ITL p99 ms",
                    "ITL max ms",
                    "long prompt TTFT ms",
                    "total tok/s",
                ],
                rows,
            ),
            "",
            "- Greedy tokens identical across budgets: " + ("yes." if same else "**NO**."),
        ]
    )
    print()
    publish(SECTION, body, a.write_docs)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
