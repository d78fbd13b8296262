"""Every hostile case of tests/hostile, the poisoned-adapter requests and the fuzz run against one
stack, counted: cases tried, answers as expected, 5xx, dropped connections, and crashes (service
processes that exited, each one restarted by the supervisor)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loraplex.tooling.stack import Stack
from tests.hostile.adapter_files import AdapterFiles
from tests.hostile.case_table import ALL_CASES
from tests.hostile.cases import CaseContext, run_case
from tests.hostile.fuzz import run_fuzz
from tests.hostile.harness import ALPHA, BETA, HostileStack, StackBroken
from tests.hostile.poison import POISONS, poisoned_requests, store_unchecked


@dataclass
class Tally:
    what: str
    tried: int = 0
    unexpected: int = 0  # answered, but not as the case expects (e.g. 201 where 400 is due)
    server_errors: int = 0  # 5xx
    dropped: int = 0  # no answer at all
    crashes: int = 0  # process exits (the supervisor restarted them)
    failures: list[str] = field(default_factory=list)


def process_exits(stack: Stack) -> int:
    """Exits so far: restarts (each followed an exit) plus services down right now."""
    return sum(len(s.history) - 1 + s.exited for s in stack.services)


def heal(hs: HostileStack) -> None:
    """Let the supervisor bring back what a case broke before the next one."""
    if hs.broken_processes() and not hs.recover():
        raise RuntimeError(f"the stack did not heal: {hs.broken_processes()}")
    hs.mark()


def run_table(hs: HostileStack, template: AdapterFiles) -> Tally:
    tally = Tally("hostile cases (tests/hostile/case_table.py)")
    ctx = CaseContext(hs.model_id, hs.adapters_root, template)
    for case in ALL_CASES:
        heal(hs)
        before = process_exits(hs.stack)
        result = run_case(hs, case, ctx)
        tally.tried += 1
        tally.dropped += result.status is None
        tally.server_errors += result.status is not None and result.status >= 500
        tally.unexpected += bool(result.problems) and not result.broke_stack
        tally.crashes += process_exits(hs.stack) - before
        if result.problems:
            tally.failures.append(f"{case.id}: {result.problems[0].splitlines()[0][:160]}")
    return tally


def run_poisoned(hs: HostileStack, template: AdapterFiles) -> Tally:
    tally = Tally("poisoned adapters in Redis (4 requests each)")
    ctx = CaseContext(hs.model_id, hs.adapters_root, template)
    for label, poison in POISONS.items():
        heal(hs)
        before = process_exits(hs.stack)
        name = ctx.fresh_name()
        answers = asyncio.run(_poisoned(hs, name, poison(template)))
        tally.tried += len(answers)
        tally.server_errors += sum(r.status_code >= 500 for r in answers)
        try:
            hs.assert_healthy(ALPHA)
            hs.assert_healthy(BETA)
        except StackBroken as e:
            tally.failures.append(f"{label}: {str(e).splitlines()[0][:160]}")
        tally.crashes += process_exits(hs.stack) - before
    return tally


async def _poisoned(hs: HostileStack, name: str, files: AdapterFiles) -> list:  # type: ignore[type-arg]
    await store_unchecked(hs, BETA, name, files)
    return await poisoned_requests(hs, name)


def run_fuzzing(hs: HostileStack, template: AdapterFiles, scale: float) -> Tally:
    heal(hs)
    before = process_exits(hs.stack)
    log = run_fuzz(hs, template, scale)
    tally = Tally("fuzz run (tests/hostile/fuzz.py, derandomized)", tried=log.tried)
    tally.server_errors = log.server_errors
    tally.dropped = sum("no answer" in f for f in log.failures)
    tally.unexpected = len(log.failures) - tally.server_errors - tally.dropped
    tally.crashes = process_exits(hs.stack) - before
    tally.failures = log.failures[:10]
    return tally
