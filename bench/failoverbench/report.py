"""Per-event numbers of bench/failover.py, from the load's records and the schedulers' logs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .load import Record

MIGRATING = re.compile(r"migrating (\S+) after")


@dataclass(frozen=True)
class Event:
    name: str
    at: float  # monotonic time of the kill
    until: float  # end of its window (the next event, or the end of the arrivals)


def migrated_ids(run_dir: Path) -> set[str]:
    """Request ids a scheduler placed again after tokens had streamed (its log says so)."""
    ids: set[str] = set()
    for log in run_dir.glob("scheduler*.log"):
        ids.update(MIGRATING.findall(log.read_text(errors="replace")))
    return ids


def cohort(records: list[Record], e: Event) -> list[Record]:
    """In flight at the kill, or started before the next event."""
    return [r for r in records if r.active_at(e.at) or e.at <= r.start < e.until]


def longest_gap(records: list[Record], tenant: str, start: float, end: float) -> float:
    """The longest time in [start, end) without a token for ``tenant`` while one of its requests
    was in flight (waiting for a first token counts; time with nothing in flight does not)."""
    spans = sorted(
        (max(r.start, start), min(r.end if r.end is not None else end, end))
        for r in records
        if r.tenant == tenant
    )
    times = sorted(t for r in records if r.tenant == tenant for t in r.token_times)
    merged: list[list[float]] = []
    for s0, e0 in spans:
        if s0 >= e0:
            continue
        if merged and s0 <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e0)
        else:
            merged.append([s0, e0])
    gap = 0.0
    for s0, e0 in merged:
        points = [s0, *(t for t in times if s0 <= t <= e0), e0]
        gap = max(gap, *(b - a for a, b in zip(points, points[1:], strict=False)))
    return gap


def longest_stall(records: list[Record], start: float, end: float) -> float:
    """The longest time in [start, end) one request waited for its next token (or its first, or
    its end): a tenant's gap hides a stalled request while its other requests stream on."""
    stall = 0.0
    for r in records:
        finish = r.end if r.end is not None else end
        points = [r.start, *r.token_times, finish]
        for a, b in zip(points, points[1:], strict=False):
            a, b = max(a, start), min(b, end)
            stall = max(stall, b - a)
    return stall


def service(records: list[Record], tenant: str, start: float, end: float) -> int:
    return sum(1 for r in records if r.tenant == tenant for t in r.token_times if start <= t < end)


def ratio(records: list[Record], tenants: tuple[str, str], start: float, end: float) -> str:
    a, b = (service(records, t, start, end) for t in tenants)
    return f"{a / b:.2f}" if b else "n/a"


def event_row(records: list[Record], e: Event, window: float, migrated: set[str]) -> list[str]:
    group = cohort(records, e)
    ok = [r for r in group if not r.error and r.end is not None]
    failed = [r for r in group if r.error]
    moved = [r for r in group if r.request_id in migrated]
    tenants = ("A", "B")
    gaps = [longest_gap(records, t, e.at - 1.0, e.until) for t in tenants]
    return [
        e.name,
        str(len(group)),
        str(len(ok)),
        str(len(moved)),
        str(len(failed)),
        *(f"{g:.2f}" for g in gaps),
        f"{longest_stall(group, e.at - 1.0, e.until):.2f}",
        ratio(records, tenants, e.at - window, e.at),
        ratio(records, tenants, e.at, e.at + window),
    ]


HEADERS = [
    "event",
    "requests",
    "completed",
    "migrated",
    "failed",
    "longest gap A (s)",
    "longest gap B (s)",
    "longest stall of one request (s)",
    "A:B tokens before",
    "A:B tokens after",
]


def failure_notes(records: list[Record], events: list[Event]) -> list[str]:
    notes = []
    for e in events:
        for r in cohort(records, e):
            if r.error:
                notes.append(f"{e.name}: {r.tenant} {r.request_id or '?'}: {r.error}")
    return notes
