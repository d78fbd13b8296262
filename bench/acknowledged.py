"""What acknowledging messages costs on the live path, side by side.

A worker sends a request's last messages (the ``finished`` report to the scheduler, the final
delta to the gateway) as requests that are answered, again until they are
(``loraplex/terminal.py``), and answers each assignment on receipt, which the scheduler sends
again until it is answered (``loraplex/assignments.py``): at least once, so a NATS node's death
cannot lose them.  This runs the scheduler bench's live path (``schedbench/live.py``: real
nats-server and scheduler, fake workers that answer every assignment at once with one token, 64
requests in flight) three ways, alternating in one run, and reports the medians:

* ``acked``: both acknowledged, as real workers do;
* ``plain-assign``: assignments published (the fake workers' heartbeats do not offer to answer);
* ``plain``: both published (the protocol before either).

    python bench/acknowledged.py [--rounds 3] [--seconds 8] [--write-docs]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_line, markdown_table, replace_doc_section, today  # noqa: E402
from schedbench.live import LiveRow, run_live  # noqa: E402

MODES = {
    "acked": "both acknowledged (now)",
    "plain-assign": "last messages acknowledged, assignments published",
    "plain": "both published (before)",
}
SECTION = "Acknowledged messages (bench/acknowledged.py)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    load = load_average()
    runs: dict[str, list[LiveRow]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            row = run_live(args.concurrency, args.seconds, http=False, mode=mode)[0]
            runs[mode].append(row)
            print(f"{mode}: {row.per_s:,.0f} submits/s ({row.errors} errors) cpu {row.cpu}")
    rows = []
    for mode, got in runs.items():
        rate = statistics.median(r.per_s for r in got)
        sched = statistics.median(r.cpu["scheduler"][0] / r.per_s * 1e6 for r in got)
        fakes = statistics.median(r.cpu["fake workers"][0] / r.per_s * 1e6 for r in got)
        each = " / ".join(f"{r.per_s:,.0f}" for r in got)
        rows.append([MODES[mode], f"**{rate:,.0f}**", each, f"{sched:.0f}", f"{fakes:.0f}",
                     str(sum(r.errors for r in got))])  # fmt: skip
    table = markdown_table(
        ["messages", "submits/s (median)", "runs", "scheduler CPU µs / submit",
         "fake workers CPU µs / submit", "errors"],
        rows,
    )  # fmt: skip
    print(table)
    if args.write_docs:
        body = (
            f"`python bench/acknowledged.py --rounds {args.rounds} --seconds {args.seconds:g} "
            f"--write-docs` ({today()}; {machine_line()}; load average {load} before the run).\n\n"
            "The scheduler bench's live path (bench → NATS → scheduler → 4 fake workers that "
            f"answer at once with one token, {args.concurrency} requests in flight, "
            f"{args.seconds:g} s per run), three ways alternating in one run. Acknowledged "
            "messages are sent as requests answered with `StreamAck` and sent again until they "
            "are: a request's last messages (`loraplex/terminal.py`: the `finished` report and "
            "the final delta) and its assignment (`loraplex/assignments.py`). Published, a dying "
            "NATS node could lose them: a client then waited for its own timeout, the scheduler "
            "ran the request again, or (an assignment) found it lost only after "
            "`--lost-request-grace` twice.\n\n" + table + "\n\n"
            "The cost is one answer per message from its receiver, and in the sender one "
            "publish whose reply subject names the message, the answer taken by one wildcard "
            "subscription and one task that resends in due order (`loraplex/acked.py`). A first "
            "version with a task, a timer and a request/reply per message cost the scheduler "
            "+70 µs per assignment (240 against 170 µs on a busier box that day), so it was "
            "redone before landing. On this 2-core box the fake workers' extra CPU also "
            "competes with the scheduler for the cores. The *Scheduler at scale* section's "
            "live figure was taken on another day: compare within this table only."
        )
        replace_doc_section(SECTION, body)
        print(f"wrote '{SECTION}' to docs/benchmarks.md")


if __name__ == "__main__":
    main()
