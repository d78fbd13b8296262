"""Resident memory of the stack's services over a run, read from ``/proc/<pid>/status`` (Linux)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loraplex.tooling.stack import Stack


def rss_mib(pid: int) -> float | None:
    """``pid``'s resident set (VmRSS) in MiB; None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Samples:
    """(seconds since the first sample, requests sent so far, service -> MiB) rows; the pid each
    service had at the first sample (a service restarted since would not be comparable)."""

    rows: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0

    def take(self, stack: Stack, sent: int) -> None:
        procs = dict(stack.procs)
        if not self.rows:
            self.t0 = time.monotonic()
            self.pids = {name: p.pid for name, p in procs.items()}
        row: dict[str, float] = {}
        for name, pid in self.pids.items():
            if procs.get(name) is not None and procs[name].pid == pid:
                mib = rss_mib(pid)
                if mib is not None:
                    row[name] = mib
        self.rows.append((time.monotonic() - self.t0, sent, row))

    def restarted(self, stack: Stack) -> list[str]:
        procs = dict(stack.procs)
        return [n for n, pid in self.pids.items() if procs.get(n) is None or procs[n].pid != pid]
