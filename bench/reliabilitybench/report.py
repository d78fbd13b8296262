"""The "Reliability" section of docs/benchmarks.md."""

from __future__ import annotations

from common import markdown_table

from reliabilitybench.inputs import Tally
from reliabilitybench.kills import OUTCOMES, KillTally


def inputs_table(tallies: list[Tally]) -> str:
    headers = ["what", "cases", "as expected", "other 4xx/2xx", "5xx", "dropped", "crashes"]
    rows = []
    for t in tallies:
        ok = t.tried - t.unexpected - t.server_errors - t.dropped
        rows.append([t.what, t.tried, ok, t.unexpected, t.server_errors, t.dropped, t.crashes])
    return markdown_table(headers, rows)


def kills_table(tallies: list[KillTally], streams: int) -> str:
    headers = ["worker killed", "trials", "streams", *OUTCOMES, "migrated"]
    headers.append("back after (median s)")
    rows = []
    for t in tallies:
        back = f"{t.back_median_s:.1f}" if t.back_median_s is not None else "never"
        total = sum(t.streams.values())
        outcomes = [t.streams[o] for o in OUTCOMES]
        rows.append([t.role, t.trials, total, *outcomes, t.migrated, back])
    return markdown_table(headers, rows)


def failures(tallies: list[Tally], kills: list[KillTally]) -> str:
    lines = [f"- {t.what}: {f}" for t in tallies for f in t.failures[:8]]
    lines += [f"- kill {k.role}: {n}" for k in kills for n in k.notes]
    return "\n".join(lines)
