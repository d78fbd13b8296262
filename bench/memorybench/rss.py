"""Memory of the stack's services over a run: each one's proportional set size (PSS), read from
``/proc/<pid>/smaps_rollup`` (Linux 4.14+; the resident set, VmRSS, where it is missing).

PSS, not RSS: ``loraplex up`` forks every service from one server that imported torch and FastAPI
(``tooling/forked.py``), so each service maps those pages shared with the others.  RSS counts them
whole in every service (a gateway would read ~300 MiB of torch it never touches); PSS divides each
shared page among the processes that map it, so the services' figures add up to what they use."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from loraplex.tooling.stack import Stack


def memory_mib(pid: int) -> float | None:
    """``pid``'s PSS in MiB (its VmRSS where smaps_rollup is missing); None when it is gone."""
    for path, field_name in (
        (f"/proc/{pid}/smaps_rollup", "Pss:"),
        (f"/proc/{pid}/status", "VmRSS:"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(field_name):
                        return int(line.split()[1]) / 1024
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                return None
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
                mib = memory_mib(pid)
                if mib is not None:
                    row[name] = mib
        self.rows.append((time.monotonic() - self.t0, sent, row))

    def restarted(self, stack: Stack) -> list[str]:
        procs = dict(stack.procs)
        return [n for n, pid in self.pids.items() if procs.get(n) is None or procs[n].pid != pid]
