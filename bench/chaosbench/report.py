"""The tables of bench/chaos.py's docs section, from the load's records and the faults fired."""

from __future__ import annotations

import re
from collections import Counter

from common import markdown_table

from chaosbench.faults import Action
from chaosbench.load import OUTCOMES, PROMPTS, Record

_ID = re.compile(r"\b(?:[a-z]+-)?[0-9a-f]{8,}(?:-[0-9a-f]{4,})*\b")


def outcomes_table(records: list[Record], migrated: set[str]) -> str:
    headers = ["tenant", "sent", *OUTCOMES, "migrated"]
    rows = []
    for tenant in [*PROMPTS, None]:
        mine = [r for r in records if tenant is None or r.tenant == tenant]
        counts = Counter(r.outcome for r in mine)
        moved = sum(1 for r in mine if r.request_id and r.request_id in migrated)
        name = f"{tenant}" if tenant else "**total**"
        rows.append([name, len(mine), *(counts[o] for o in OUTCOMES), moved])
    return markdown_table(headers, rows)


def actions_table(actions: list[Action], records: list[Record], t0: float) -> str:
    """Each fault, the requests in flight when it fired, and those that ended failed between it
    and the next one."""
    headers = ["at (s)", "fault", "done", "in flight", "failed before the next fault"]
    rows = []
    for i, a in enumerate(actions):
        until = actions[i + 1].at if i + 1 < len(actions) else float("inf")
        failed = sum(
            1
            for r in records
            if r.failed and r.end is not None and a.at <= r.end - t0 < until
        )  # fmt: skip
        at = t0 + a.at
        busy = sum(1 for r in records if r.start <= at and (r.end is None or r.end > at))
        rows.append([f"{a.at:.1f}", a.fault, a.what, busy, failed])
    return markdown_table(headers, rows)


def messages_table(records: list[Record]) -> str:
    """Requests that did not complete with the reference text, grouped by why."""
    groups = Counter((r.outcome, _ID.sub("<id>", r.message)) for r in records if r.message)
    rows = [[o, m.replace("|", "\\|"), n] for (o, m), n in groups.most_common()]
    return markdown_table(["outcome", "message", "requests"], rows) if rows else ""


def leak_cells(values: dict[str, float | None]) -> tuple[str, int]:
    """(the non-zero gauges, or "all 0"; how many are non-zero or unreadable)."""
    bad = {k: v for k, v in values.items() if v != 0}
    if not bad:
        return f"all {len(values)} gauges 0", 0
    shown = ", ".join(f"{k} = {'unreadable' if v is None else f'{v:g}'}" for k, v in bad.items())
    return shown, len(bad)


def after_table(
    missing: list[str],
    quiesce_s: float,
    final: list[Record],
    leaks_before: dict[str, float | None],
    leaks_after: dict[str, float | None],
) -> tuple[str, list[str]]:
    """The after-the-soak checks, and a line for each one that failed."""
    problems = []
    whole = "whole" if not missing else "not whole: " + "; ".join(missing)
    if missing:
        problems.append(f"the stack did not become whole: {'; '.join(missing)}")
    good = sum(r.outcome == "completed" for r in final)
    if good < len(final):
        problems.append(f"final batch: {len(final) - good} of {len(final)} not as expected")
    rows = [
        ["stack whole again (every service up, every worker heart-beating)",
         f"{whole} after {quiesce_s:.1f} s"],
        [f"final batch ({len(final)} requests)",
         f"{good} completed with the reference text"
         + "".join(f"; {r.tenant}{r.prompt}: {r.outcome} {r.message}" for r in final
                   if r.outcome != "completed")],
    ]  # fmt: skip
    for label, values in (("after quiesce", leaks_before), ("after the final batch", leaks_after)):
        cell, bad = leak_cells(values)
        rows.append([f"in-flight gauges {label}", cell])
        if bad:
            problems.append(f"leak {label}: {cell}")
    return markdown_table(["check", "result"], rows), problems
