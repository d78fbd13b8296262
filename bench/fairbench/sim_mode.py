"""--mode sim: every policy on the same seeded arrivals through the simulated server."""

from __future__ import annotations

import argparse
import time

from common import replace_doc_section

from loraplex.scheduler.policies.registry import make_policy
from loraplex.tooling.simulator import (
    ServerConfig,
    generate_arrivals,
    paper_workload,
    simulate,
    summarize,
)

from .plots import plot
from .report import SECTION, docs_body
from .results import Row, table
from .workloads import policy_specs


def run_sim(args: argparse.Namespace) -> list[Row]:
    server = ServerConfig().scaled(args.length_scale)
    rows = []
    for name in args.workloads:
        wl = paper_workload(name, args.time_scale, args.length_scale)
        arrivals = generate_arrivals(wl, args.seed)
        for label, pname, opts in policy_specs(args.rpm_limit):
            if pname == "rpm":
                opts = {**opts, "window_s": 60.0 * args.time_scale}
            t0 = time.perf_counter()
            res = simulate(make_policy(pname, **opts), arrivals, server, wl.duration_s)
            stats = summarize(res, time_scale=args.time_scale)
            rows.append(Row(name, label, stats, res, time.perf_counter() - t0))
    return rows


def main_sim(args: argparse.Namespace) -> None:
    rows = run_sim(args)
    print(table(rows))
    print(f"\nsimulated {len(rows)} runs in {sum(r.wall_s for r in rows):.1f} s")
    images = [] if args.no_plots else plot(rows, args.img_dir)
    for path in images:
        print(f"wrote {path}")
    if args.write_docs:
        replace_doc_section(SECTION, docs_body(args, rows, images))
        print("updated docs/benchmarks.md")
