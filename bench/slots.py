"""Adapter slots and the requests behind a waiting one: a tenant's base-model requests beside
another tenant's requests over more adapters than the worker has device slots.

    python bench/slots.py [--max-loras 2] [--adapters 4] [--a-requests 12] [--b-requests 4]
                          [--a-tokens 48] [--b-tokens 8] [--write-docs]

Tenant A queues ``--a-requests`` requests round-robin over ``--adapters`` adapters (more than
the ``--max-loras`` device slots, so its later ones wait for a slot); tenant B's
``--b-requests`` base-model requests arrive right behind them.  Reported, side by side in one run:

- B alone (the floor);
- B behind A with loraplex's rule (requests that need no new slot pass one waiting for a slot,
  ``engine/scheduler.py``);
- B behind A with the head-of-line rule this replaced (nothing passes a request waiting for a
  slot: B waits until A's adapters have drained).

Metrics are B's finish in engine steps (noise-free) and milliseconds, and A's own last finish.
Greedy tokens per request must be the same under both rules.  Engine-level (``LLMEngine.step``),
the tiny demo model, CPU, fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402

from loraplex import LLM, SamplingParams  # noqa: E402
from loraplex.tooling.demo import write_demo_model  # noqa: E402

SECTION = "Adapter slots: the requests behind a waiting one (bench/slots.py)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-loras", type=int, default=2, help="device slots")
    p.add_argument("--adapters", type=int, default=4, help="tenant A's adapters")
    p.add_argument("--a-requests", type=int, default=12)
    p.add_argument("--b-requests", type=int, default=4)
    p.add_argument("--a-tokens", type=int, default=48, help="output tokens of A's requests")
    p.add_argument("--b-tokens", type=int, default=8, help="output tokens of B's requests")
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def head_of_line(llm: LLM) -> None:
    """The rule before: once a request waits for a slot, nobody behind it is admitted."""
    scheduler = llm.engine.scheduler
    pin = scheduler._pin_adapter

    def strict(seq: Any, blocked: list[Any], loads: list[tuple[str, int]]) -> bool:
        return not blocked and pin(seq, blocked, loads)

    scheduler._pin_adapter = strict  # type: ignore[method-assign]


def run(model: Path, adapters: list[Any], a: argparse.Namespace, mode: str) -> dict[str, Any]:
    llm = LLM(
        model, dtype="float32", device="cpu", max_loras=a.max_loras,
        max_num_seqs=a.a_requests + a.b_requests, enable_prefix_caching=False,
    )  # fmt: skip
    for info in adapters:
        llm.add_lora(info.name, info.path)
    if mode == "head-of-line":
        head_of_line(llm)
    eng = llm.engine
    if mode != "alone":
        for i in range(a.a_requests):
            lora = adapters[i % len(adapters)].name
            params = SamplingParams(temperature=0, max_tokens=a.a_tokens, ignore_eos=True)
            eng.add_request(f"A{i}", [5 + i, 9, 13, 17, 21, 25], params, lora=lora)
    for i in range(a.b_requests):
        params = SamplingParams(temperature=0, max_tokens=a.b_tokens, ignore_eos=True)
        eng.add_request(f"B{i}", [7 + i, 11, 15, 19], params)
    tokens: dict[str, list[int]] = {}
    done: dict[str, tuple[int, float]] = {}  # request -> (step, seconds) it finished at
    start, steps = time.perf_counter(), 0
    while eng.has_unfinished():
        outs = eng.step()
        steps += 1
        for o in outs:
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                done[o.request_id] = (steps, time.perf_counter() - start)
    b = [done[f"B{i}"] for i in range(a.b_requests)]
    a_last = max((v for k, v in done.items() if k.startswith("A")), default=None)
    return {"mode": mode, "b": b, "a_last": a_last, "tokens": tokens}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraplex-slots-bench-") as tmp:
        info = write_demo_model(Path(tmp), num_adapters=a.adapters)
        adapters = list(info.adapters)
        run(info.model_dir, adapters, a, "alone")  # warm-up: the first run pays for imports
        modes = ("alone", "loraplex", "head-of-line")
        results = [run(info.model_dir, adapters, a, m) for m in modes]
    rows = []
    labels = {
        "alone": "B alone (floor)",
        "loraplex": "B behind A: base passes a waiting request (loraplex)",
        "head-of-line": "B behind A: nothing passes it (the rule before)",
    }
    for r in results:
        b_steps = [s for s, _ in r["b"]]
        b_ms = [1e3 * t for _, t in r["b"]]
        a_last = r["a_last"]
        rows.append([
            labels[r["mode"]], f"{statistics.median(b_steps):.0f}", f"{max(b_steps)}",
            f"{statistics.median(b_ms):.0f}", f"{max(b_ms):.0f}",
            "" if a_last is None else f"{a_last[0]} / {1e3 * a_last[1]:.0f}",
        ])  # fmt: skip
    ours, before = results[1]["tokens"], results[2]["tokens"]
    same = ours == before
    body = "\n".join([
        f"Command: `{' '.join(['python bench/slots.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        f"Tenant A queues {a.a_requests} requests ({a.a_tokens} output tokens) round-robin over "
        f"{a.adapters} adapters on a worker with {a.max_loras} adapter slots; tenant B's "
        f"{a.b_requests} base-model requests ({a.b_tokens} tokens) arrive right behind them. "
        "Tiny demo model, fp32, CPU, `LLMEngine.step` in a loop; steps are noise-free, "
        "milliseconds indicative.",
        "",
        markdown_table(
            ["B's requests", "finish step p50", "finish step max", "ms p50", "ms max",
             "A's last finish (step / ms)"],
            rows,
        ),
        "",
        "- Greedy tokens of every request identical under both rules: "
        + ("yes." if same else "**NO**."),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
