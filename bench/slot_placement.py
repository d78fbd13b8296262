"""Placement and adapter slots: where a request for a new adapter goes when a worker's adapter
slots are, or are about to be, all pinned.

    python bench/slot_placement.py [--max-loras 2] [--a-tokens 96] [--base-requests 4]
                                   [--b-requests 4] [--b-tokens 8] [--burst-tokens 32]
                                   [--write-docs]

Two real engines (``LLMEngine``, the tiny demo model, CPU) stand for two colocated workers, stepped
in lock-step as two GPUs would run.  The scheduler's own ``WorkerRegistry`` places every request
from the engines' heartbeats (load, resident adapters, pinned slots).  Two scenarios, each run
under loraplex's rule and the rule before, side by side:

1. *Pinned*: worker w0 runs tenant A's ``--max-loras`` long requests, one per adapter, which pin
   all its slots; worker w1 runs ``--base-requests`` base-model requests (busier, slots free).
   Tenant B then sends ``--b-requests`` requests for an adapter neither holds.  The rule before
   placed by load alone (heartbeats without pinned slots): B went to the idle w0 and waited there
   until one of A's adapters drained.
2. *Burst*: w0 idle, w1 busier, every slot free at the last heartbeat; ``--max-loras`` + 1
   requests for distinct new adapters arrive before the next one.  loraplex counts the adapters it
   placed since (``WorkerState.adapter_runs``); the rule before saw only the heartbeat, so every
   request found w0's slots free and the last one waited there for a slot.

Metrics: finish in steps (noise-free) and milliseconds.  Greedy tokens per request must be the
same under both rules.
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

SECTION = "Adapter slots in placement: new adapters beside pinned slots (bench/slot_placement.py)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-loras", type=int, default=2, help="adapter slots per worker")
    p.add_argument("--a-tokens", type=int, default=96, help="output tokens of A's requests")
    p.add_argument("--base-requests", type=int, default=4, help="w1's base-model requests")
    p.add_argument("--b-requests", type=int, default=4)
    p.add_argument("--b-tokens", type=int, default=8)
    p.add_argument("--burst-tokens", type=int, default=32, help="output tokens in the burst")
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


def run(
    model: Path, adapters: list[Any], a: argparse.Namespace, scenario: str, mode: str
) -> dict[str, Any]:
    """One scenario (``pinned``, ``burst``) under one rule (``loraplex``, ``before``)."""
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
    for i in range(a.max_loras if scenario == "pinned" else 0):  # A pins every slot of w0
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
    report_pinned = mode == "loraplex" or scenario == "burst"
    for wid, llm in workers.items():
        registry.heartbeat(heartbeat(wid, llm, report_pinned), 0.0)
        for r in (*llm.engine.scheduler.running, *llm.engine.scheduler.waiting):
            # what the scheduler placed before: its room, and under loraplex its adapter
            adapter = r.lora if mode == "loraplex" else None
            registry.commit(wid, r.request_id, len(r.prompt_token_ids) + a.a_tokens, adapter)
    if scenario == "pinned":  # B: one adapter neither holds
        asks = [adapters[a.max_loras].name] * a.b_requests
        out = a.b_tokens
    else:  # the burst: one request per adapter, one adapter more than w0 has slots
        asks = [info.name for info in adapters[: a.max_loras + 1]]
        out = a.burst_tokens
    short = SamplingParams(temperature=0, max_tokens=out, ignore_eos=True)
    for i, name in enumerate(asks):
        where = registry.place(name, 4, 4 + out)
        assert where is not None
        # the rule before committed room only: nothing told placement which adapter it was for
        registry.commit(where.prefill, f"B{i}", 4 + out, name if mode == "loraplex" else None)
        placed[f"B{i}"] = where.prefill
        workers[where.prefill].engine.add_request(f"B{i}", [7 + i, 11, 15, 19], short, lora=name)
    while any(llm.engine.has_unfinished() for llm in workers.values()):
        step_all()
    b = [done[f"B{i}"] for i in range(len(asks))]
    return {"scenario": scenario, "mode": mode, "b": b, "placed": placed, "tokens": tokens}


def table(results: list[dict[str, Any]], who: str) -> str:
    labels = {"loraplex": "loraplex", "before": "the rule before"}
    rows = []
    for r in results:
        b_steps = [s for s, _ in r["b"]]
        b_ms = [1e3 * t for _, t in r["b"]]
        where = ", ".join(sorted(set(r["placed"].values())))
        rows.append([
            labels[r["mode"]], where, f"{statistics.median(b_steps):.0f}", f"{max(b_steps)}",
            f"{statistics.median(b_ms):.0f}", f"{max(b_ms):.0f}",
        ])  # fmt: skip
    head = ["placement", f"{who} placed on", "finish step p50", "max", "ms p50", "ms max"]
    return markdown_table(head, rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="loraplex-slot-placement-") as tmp:
        info = write_demo_model(Path(tmp), num_adapters=a.max_loras + 1)
        adapters = list(info.adapters)
        for scenario in ("pinned", "burst"):
            results[scenario] = [
                run(info.model_dir, adapters, a, scenario, mode) for mode in ("loraplex", "before")
            ]
    same = all(r[0]["tokens"] == r[1]["tokens"] for r in results.values())
    body = "\n".join([
        f"Command: `{' '.join(['python bench/slot_placement.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        f"Two workers with {a.max_loras} adapter slots each (two `LLMEngine`s stepped in "
        "lock-step; the scheduler's `WorkerRegistry` places from their heartbeats). Tiny demo "
        "model, fp32, CPU; steps are noise-free, milliseconds indicative.",
        "",
        f"**Pinned.** w0 runs tenant A's {a.max_loras} requests ({a.a_tokens} tokens), one per "
        f"adapter, pinning every slot; w1 runs {a.base_requests} base-model requests (busier, "
        f"slots free). Tenant B then sends {a.b_requests} requests ({a.b_tokens} tokens) for an "
        "adapter neither holds. The rule before: the least loaded worker (heartbeats without "
        "pinned slots); loraplex: a worker with a slot to spare first.",
        "",
        table(results["pinned"], "B"),
        "",
        f"**Burst.** w0 idle, w1 runs {a.base_requests} base-model requests; every slot free at "
        f"the last heartbeat. {a.max_loras + 1} requests ({a.burst_tokens} tokens) for "
        f"{a.max_loras + 1} adapters neither holds arrive before the next heartbeat. The rule "
        "before: the heartbeat's pinned slots only, so each request finds w0's slots free; "
        "loraplex: the adapters placed since the heartbeat count too.",
        "",
        table(results["burst"], "the burst"),
        "",
        "- Greedy tokens of every request identical under both rules: "
        + ("yes." if same else "**NO**."),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
