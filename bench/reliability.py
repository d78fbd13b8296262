"""Reliability of a live stack against hostile tenants and dying workers (issue 13).

1. Inputs: every hostile case of tests/hostile (sampling, unicode and bytes, adapter configs and
   files), adapters poisoned straight into Redis used by requests, and the derandomized fuzz run,
   all against one fresh ``loraplex up`` stack with two tenants.  Counted: cases, answers as
   expected, other answers, 5xx, dropped connections, crashes (process exits).
2. Worker kills: on a stack with one prefill and two decode workers, ``--trials`` times each,
   start ``--streams`` concurrent streams and SIGKILL a decode worker (alternating), then
   separately the prefill worker, mid-stream; each stream ends completed (the uninterrupted
   greedy run's text), completed with a different text, failed cleanly, truncated or hung (no end
   within ``--hang-s``); migrations counted from the scheduler's log.  The supervisor restarts the worker; the next
   trial waits for its heartbeat.

    python bench/reliability.py [--trials 6] [--streams 8] [--skip-inputs | --skip-kills]
                                [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.hostile
from common import machine_line, publish, today  # noqa: E402
from reliabilitybench.inputs import Tally, run_fuzzing, run_poisoned, run_table  # noqa: E402
from reliabilitybench.kills import run_kills  # noqa: E402
from reliabilitybench.report import failures, inputs_table, kills_table  # noqa: E402

from tests.hostile.adapter_files import AdapterFiles  # noqa: E402
from tests.hostile.harness import HostileStack  # noqa: E402

SECTION = "Reliability (bench/reliability.py)"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6, help="kills per worker role")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams per kill")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens each stream asks for")
    p.add_argument("--hang-s", type=float, default=30.0, help="a stream not ended by then hangs")
    p.add_argument("--fuzz-scale", type=float, default=1.0, help="x the fuzz run's ~750 cases")
    p.add_argument("--skip-inputs", action="store_true", help="no hostile inputs (part 1)")
    p.add_argument("--skip-kills", action="store_true", help="no worker kills (part 2)")
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    a = parse(argv)
    template = AdapterFiles.template()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tallies: list[Tally] = []
        if not a.skip_inputs:
            hs = HostileStack.start(Path(tmp) / "inputs")
            try:
                tallies = [run_table(hs, template), run_poisoned(hs, template)]
                tallies.append(run_fuzzing(hs, template, a.fuzz_scale))
            finally:
                hs.stop()
        kills = []
        if not a.skip_kills:
            topology = ["--prefill-workers", "1", "--decode-workers", "2"]
            hs = HostileStack.start(Path(tmp) / "kills", topology)
            try:
                args = (a.trials, a.streams, a.max_tokens, a.hang_s)
                kills.append(asyncio.run(run_kills(hs, ["decode-0", "decode-1"], *args)))
                kills.append(asyncio.run(run_kills(hs, ["prefill-0"], *args)))
            finally:
                hs.stop()
    minutes = (time.monotonic() - t0) / 60
    body = render(argv, a, tallies, kills, minutes)
    publish(SECTION, body, a.write_docs)
    return 0


def render(argv, a, tallies, kills, minutes: float) -> str:  # type: ignore[no-untyped-def]
    parts = [
        f"Command: `{' '.join(['python bench/reliability.py', *argv])}` "
        f"({today()}; {machine_line()}; {minutes:.1f} min).",
    ]
    if tallies:
        parts += [
            "Hostile inputs against one fresh `loraplex up` stack (two tenants, one prefill "
            "and one decode worker, CPU): every case of `tests/hostile/case_table.py`, three "
            "adapters poisoned straight into Redis, and the derandomized fuzz run of "
            "`tests/hostile/fuzz.py`. *As expected*: the answer the case allows (a 4xx with an "
            "OpenAI error body, or tokens) and the other tenant served afterwards by the same "
            "processes; *crashes*: service processes that exited (the supervisor restarted them).",
            inputs_table(tallies),
        ]
    if kills:
        parts += [
            f"Worker kills on a stack with one prefill and two decode workers: each trial starts "
            f"{a.streams} concurrent streams of {a.max_tokens} tokens (the two tenants "
            "alternating), then SIGKILLs a decode worker (alternating between the two) once "
            "every stream has a token, or the prefill worker once the first one has. "
            "*Completed*: `[DONE]` after the same text as the uninterrupted greedy run of its "
            "prompt (*text differs*: a repeated or missing token); *migrated*: requests the "
            "scheduler placed again with their tokens so far after their worker died. *Failed "
            "cleanly*: an error status with an OpenAI error body, or an SSE error event followed "
            f"by `[DONE]`; *truncated*: the body stopped without either; *hung*: no end within "
            f"{a.hang_s:.0f} s of the kill. *Back after*: kill to the restarted worker's first "
            "heartbeat (the supervisor restarts a worker that had come up and was killed at "
            "once, as a fork of the server that imported torch: bench/restart.py). A request that has not streamed yet (a prefill kill's) waits for a live "
            "worker for the scheduler's `--unavailable-timeout` (5 s), then fails cleanly, so "
            "that count follows how fast the killed worker is back.",
            kills_table(kills, a.streams),
        ]
    notes = failures(tallies, kills)
    if notes:
        parts += ["Cases not as expected:", notes]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
