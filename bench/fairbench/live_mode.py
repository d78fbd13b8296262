"""--mode live: one ``loraplex up`` per policy, capacity calibration, and every workload replayed
against it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from common import replace_doc_section

from loraplex.scheduler.policies.base import QueuedRequest
from loraplex.scheduler.settings import build_parser as build_scheduler_parser
from loraplex.tooling.launcher import Stack, start_stack
from loraplex.tooling.ports import free_port
from loraplex.tooling.simulator import generate_arrivals, summarize
from loraplex.tooling.up_flags import parse_up_args

from .live_client import drive, live_result
from .plots import plot
from .report import LIVE_SECTION, live_docs_body
from .results import LiveRow, live_table, mean_acc_diff
from .workloads import CALIBRATION_TENANT, live_workload, tenant_name, write_tenants_file


@contextlib.contextmanager
def live_stack(
    policy: str, tenants_file: Path, args: argparse.Namespace
) -> Iterator[tuple[str, str]]:
    """``loraplex up`` for one policy; yields the gateway URL and its /metrics URL, stops
    everything on exit."""
    run_dir = args.run_dir / policy
    flags = [
        "--port", str(free_port()), "--run-dir", str(run_dir), "--tenants", str(tenants_file),
        "--fairness", policy, "--dtype", "float32", "--prefill-workers", str(args.prefill_workers),
        "--decode-workers", str(args.decode_workers), "--max-num-seqs", str(args.max_num_seqs),
        "--num-kv-blocks", str(args.num_kv_blocks),
    ]  # fmt: skip
    if args.device:
        flags += ["--device", args.device]
    stack = Stack(run_dir)
    try:
        base, _, _ = start_stack(parse_up_args(flags), stack)
        yield base, stack.urls["metrics"]
    finally:
        stack.stop()


def calibrate(base: str, metrics: str, args: argparse.Namespace) -> float:
    """Requests/s this stack serves of the workloads' request size, with the bench's own client."""
    n_in = n_out = max(1, round(256 * args.length_scale))
    slots = args.max_num_seqs * args.decode_workers
    burst = [QueuedRequest(f"cal{i}", "c1", n_in, n_out, 0.0) for i in range(20 * slots)]
    warm, total = 2.0, 2.0 + args.calibration_s
    log = asyncio.run(drive(base, metrics, burst, total, args.seed, lambda _: CALIBRATION_TENANT))
    tokens = sum(e[3] for e in log.events if warm < e[0] <= total)
    return tokens / (total - warm) / (n_in + n_out)


def run_live(args: argparse.Namespace) -> tuple[list[LiveRow], float]:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    tenants_file = args.run_dir / "tenants.json"
    write_tenants_file(tenants_file, args.workloads)
    capacity, rows = args.capacity, []
    rpm_limit = build_scheduler_parser().get_default("rpm_limit")
    for policy in args.policies:
        label = f"RPM {rpm_limit}" if policy == "rpm" else policy.upper()
        with live_stack(policy, tenants_file, args) as (base, metrics):
            if capacity is None:
                capacity = calibrate(base, metrics, args)
                print(f"capacity: {capacity:.2f} requests/s", flush=True)
                if capacity <= 0:  # arrival rates scale with it: 0 would divide by zero
                    raise SystemExit(
                        "calibration served nothing: give --capacity or a longer --calibration-s"
                    )
            for name in args.workloads:
                rows.append(live_run(base, metrics, name, label, args, capacity))
                print(live_table(rows[-1:]).splitlines()[-1], flush=True)
    assert capacity is not None
    return rows, capacity


def live_run(
    base: str, metrics: str, name: str, label: str, args: argparse.Namespace, capacity: float
) -> LiveRow:
    """One workload against a running stack: replay, measure, summarize."""
    wl = live_workload(name, args, capacity)
    arrivals = generate_arrivals(wl, args.seed)
    t0 = time.perf_counter()
    log = asyncio.run(
        drive(base, metrics, arrivals, wl.duration_s, args.seed, lambda c: tenant_name(name, c))
    )
    res = live_result(log, arrivals, wl.duration_s)
    stats = {**summarize(res, time_scale=args.time_scale), "avg_acc_diff": mean_acc_diff(res)}
    out = {c: log.outcomes.get(c, Counter()) for c in res.service}
    count = {what: {c: out[c][what] for c in out} for what in ("finished", "rejected", "error")}
    wall = time.perf_counter() - t0
    return LiveRow(name, label, stats, res, wall, *count.values())


def main_live(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        if args.run_dir is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="fairness-live-"))
            args.run_dir = Path(tmp)
        rows, capacity = run_live(args)
    args.total_s = time.perf_counter() - t0
    print(live_table(rows))
    print(f"\n{len(rows)} live runs in {args.total_s:.0f} s (capacity {capacity:.2f} req/s)")
    images = [] if args.no_plots else plot(rows, args.img_dir, "fairness_live", 1e3, "thousands")
    for path in images:
        print(f"wrote {path}")
    if args.write_docs:
        replace_doc_section(LIVE_SECTION, live_docs_body(args, rows, capacity, images))
        print("updated docs/benchmarks.md")
