"""How fast a killed worker is back: forked from the pre-imported server vs exec'd anew.

    python bench/restart.py [--kills 3] [--write-docs]

One ``loraplex up`` stack (one prefill, one decode worker, the tiny demo model, CPU), supervised.
Each round SIGKILLs a worker (prefill and decode in turn) and times, from the kill, the restarted
process's ``/ready`` (it loaded the model and joined) and the first completion answered after it.
The rounds alternate between the two ways the supervisor starts a service
(``LORAPLEX_FORK_SERVER``, read at each start): a fork of the server that imported torch, the
engine and FastAPI once (``tooling/forked.py``), and ``python -m`` exec'd from scratch, so both
run on the same stack in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, publish, today  # noqa: E402

from loraplex.tooling.launcher import Stack, start_stack  # noqa: E402
from loraplex.tooling.ports import free_port  # noqa: E402
from loraplex.tooling.supervisor import http_ready  # noqa: E402
from loraplex.tooling.up_flags import parse_up_args  # noqa: E402

SECTION = "Worker restarts: forked vs exec'd (bench/restart.py)"
WAYS = {"1": "forked (default)", "0": "exec'd (LORAPLEX_FORK_SERVER=0)"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=3, help="kills per worker and way of starting")
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def one_kill(stack: Stack, name: str, model: str) -> tuple[float, float]:
    """Seconds from SIGKILL to the new process's /ready, and to a completion answered after it."""
    svc = stack.service(name)
    while svc.ready_at is None:  # the supervisor saw it come up: a kill now is no crash loop
        time.sleep(0.02)
    old = svc.proc
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    killed = time.monotonic()
    while svc.proc is old or not http_ready(stack.status[name] + "/ready"):
        assert time.monotonic() - killed < 120, f"{name} did not come back"
        time.sleep(0.02)
    ready = time.monotonic() - killed
    body = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    while True:
        r = httpx.post(f"{stack.urls['gateway']}/v1/completions", json=body, timeout=60)
        if r.status_code == 200:
            return ready, time.monotonic() - killed
        time.sleep(0.05)  # 503 until the scheduler has its heartbeat


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    before = os.environ.get("LORAPLEX_FORK_SERVER")
    with tempfile.TemporaryDirectory(prefix="loraplex-restart-bench-") as tmp:
        stack = Stack(Path(tmp))
        up = ["--port", str(free_port()), "--run-dir", tmp, "--device", "cpu"]
        args = parse_up_args([*up, "--prefill-workers", "1", "--decode-workers", "1"])
        try:
            _, model_dir, _ = start_stack(args, stack)
            model = os.path.basename(os.path.normpath(model_dir))
            for _, name, way in itertools.product(
                range(a.kills), ("prefill-0", "decode-0"), ("1", "0")
            ):
                os.environ["LORAPLEX_FORK_SERVER"] = way  # read by the supervisor's next start
                times.setdefault((name, way), []).append(one_kill(stack, name, model))
        finally:
            if before is None:
                os.environ.pop("LORAPLEX_FORK_SERVER", None)
            else:
                os.environ["LORAPLEX_FORK_SERVER"] = before
            stack.stop(timeout=10)
    rows = []
    for (name, way), got in sorted(times.items(), key=lambda kv: (kv[0][0], -int(kv[0][1]))):
        ready = [r for r, _ in got]
        served = [s for _, s in got]
        rows.append([
            name.split("-")[0], WAYS[way], str(len(got)), f"{statistics.median(ready):.2f}",
            f"{max(ready):.2f}", f"{statistics.median(served):.2f}",
        ])  # fmt: skip
    body = "\n".join([
        f"Command: `{' '.join(['python bench/restart.py', *argv])}`",
        f"({today()}; {machine_line()}).",
        "",
        "One `loraplex up` stack (one prefill, one decode worker, tiny demo model, CPU), "
        "supervised. Each round SIGKILLs a worker and times the restarted process's `/ready` "
        "and the first completion answered after the kill; rounds alternate between a fork of "
        "the pre-imported server and a fresh `python -m` exec, on the same stack.",
        "",
        markdown_table(
            ["worker killed", "started as", "kills", "to /ready p50 s", "max s",
             "to a completion p50 s"],
            rows,
        ),
    ])  # fmt: skip
    publish(SECTION, body, a.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
