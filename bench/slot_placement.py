"""Placement and adapter slots: where a request for a new adapter goes when the least loaded
worker has every adapter slot pinned.

    python bench/slot_placement.py [--max-loras 2] [--a-tokens 96] [--base-requests 4]
                                   [--b-requests 4] [--b-tokens 8] [--write-docs]

Two real engines (``LLMEngine``, the tiny demo model, CPU) stand for two colocated workers, stepped
in lock-step as two GPUs would run.  The scheduler's own ``WorkerRegistry`` places every request
from the engines' heartbeats (load, resident adapters, pinned slots).  Worker w0 runs tenant A's
``--max-loras`` long requests, one per adapter, which pin all its slots; worker w1 runs
``--base-requests`` base-model requests (busier, slots free).  Then tenant B sends
``--b-requests`` requests for an adapter neither holds.  Side by side in one run:

- loraplex: the heartbeat reports pinned slots; placement prefers a worker with a slot to spare;
- the rule before: placement by load alone (heartbeats without pinned slots): B goes to the idle
  w0 and waits there until one of A's adapters drains.

Metrics: B's finish in steps (noise-free) and milliseconds.  Greedy tokens per request must be
the same under both rules.
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
from loraplex.protocol import WorkerHeartbeat  # noqa: E402
from loraplex.scheduler.workers import WorkerRegistry  # noqa: E402
from loraplex.tooling.demo import write_demo_model  # noqa: E402

SECTION = "Adapter slots in placement: a new adapter beside pinned slots (bench/slot_placement.py)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-loras", type=int, default=2, help="adapter slots per worker")
    p.add_argument("--a-tokens", type=int, default=96, help="output tokens of A's requests")
    p.add_argument("--base-requests", type=int, default=4, help="w1's base-model requests")
    p.add_argument("--b-requests", type=int, default=4)
    p.add_argument("--b-tokens", type=int, default=8)
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def heartbeat(wid: str, llm: LLM, report_pinned: bool) -> WorkerHeartbeat:
    e = llm.engine
    return WorkerHeartbeat(
        wid, "both", e.allocator.num_free, e.allocator.num_blocks, e.config.block_size,
        running=len(e.scheduler.running), waiting=len(e.scheduler.waiting),
        max_num_seqs=e.config.max_num_seqs, adapters=e.slots.resident(),
        adapter_slots_used=len(e.slots.resident()), adapter_slots_total=e.slots.num_slots,
        adapter_slots_pinned=e.slots.pinned_slots() if report_pinned else 0,
    )  # fmt: skip


def run(model: Path, adapters: list[Any], a: argparse.Namespace, mode: str) -> dict[str, Any]:
    workers = {
        wid: LLM(
            model,
            dtype="float32",
            device="cpu",
            max_loras=a.max_loras,
            max_num_seqs=16,
            enable_prefix_caching=False,
        )  # fmt: skip
        for wid in ("w0", "w1")
    }
    for llm in workers.values():
        for info in adapters:
            llm.add_lora(info.name, info.path)
    long = SamplingParams(temperature=0, max_tokens=a.a_tokens, ignore_eos=True)
    for i in range(a.max_loras):  # A pins every slot of w0
        workers["w0"].engine.add_request(f"A{i}", [5 + i, 9, 13], long, lora=adapters[i].name)
    for i in range(a.base_requests):
        workers["w1"].engine.add_request(f"base{i}", [6 + i, 10, 14], long)
    tokens: dict[str, list[int]] = {}
    done: dict[str, tuple[int, float]] = {}
    placed: dict[str, str] = {}
    start, steps = time.perf_counter(), 0

    def step_all() -> None:
        nonlocal steps
        steps += 1
        for llm in workers.values():
            for o in llm.engine.step():
                tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finished:
                    done[o.request_id] = (steps, time.perf_counter() - start)

    step_all()  # everything admitted: w0's slots pinned, w1 busier
    start, steps = time.perf_counter(), 0
    registry = WorkerRegistry(3.0)
    for wid, llm in workers.items():
        registry.heartbeat(heartbeat(wid, llm, report_pinned=mode == "loraplex"), 0.0)
    new_adapter = adapters[a.max_loras].name
    short = SamplingParams(temperature=0, max_tokens=a.b_tokens, ignore_eos=True)
    for i in range(a.b_requests):
        where = registry.place(new_adapter, 4, 4 + a.b_tokens)
        assert where is not None
        registry.commit(where.prefill, f"B{i}", 1)
        placed[f"B{i}"] = where.prefill
        workers[where.prefill].engine.add_request(
            f"B{i}", [7 + i, 11, 15, 19], short, lora=new_adapter
        )
    while any(llm.engine.has_unfinished() for llm in workers.values()):
        step_all()
    b = [done[f"B{i}"] for i in range(a.b_requests)]
    return {"mode": mode, "b": b, "placed": placed, "tokens": tokens}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraplex-slot-placement-") as tmp:
        info = write_demo_model(Path(tmp), num_adapters=a.max_loras + 1)
        adapters = list(info.adapters)
        results = [run(info.model_dir, adapters, a, m) for m in ("loraplex", "load-only")]
    labels = {
        "loraplex": "loraplex: a worker with a slot to spare first",
        "load-only": "the rule before: the least loaded worker",
    }
    rows = []
    for r in results:
        b_steps = [s for s, _ in r["b"]]
        b_ms = [1e3 * t for _, t in r["b"]]
        where = ", ".join(sorted(set(r["placed"].values())))
        rows.append([
            labels[r["mode"]], where, f"{statistics.median(b_steps):.0f}", f"{max(b_steps)}",
            f"{statistics.median(b_ms):.0f}", f"{max(b_ms):.0f}",
        ])  # fmt: skip
    same = results[0]["tokens"] == results[1]["tokens"]
    body = "\n".join([
        f"Command: `{' '.join(['python bench/slot_placement.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        f"Two workers with {a.max_loras} adapter slots each (two `LLMEngine`s stepped in "
        f"lock-step; the scheduler's `WorkerRegistry` places from their heartbeats). w0 runs "
        f"tenant A's {a.max_loras} requests ({a.a_tokens} tokens), one per adapter, pinning every "
        f"slot; w1 runs {a.base_requests} base-model requests (busier, slots free). Tenant B then "
        f"sends {a.b_requests} requests ({a.b_tokens} tokens) for an adapter neither holds. Tiny "
        "demo model, fp32, CPU; steps are noise-free, milliseconds indicative.",
        "",
        markdown_table(
            ["placement", "B placed on", "B finish step p50", "max", "ms p50", "ms max"], rows
        ),
        "",
        "- Greedy tokens of every request identical under both rules: "
        + ("yes." if same else "**NO**."),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
