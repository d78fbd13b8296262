"""``Stack.stop`` drains in order (the gateway and workers, then the scheduler and adapter store,
then the servers) and a second Ctrl-C (``hurry``) kills what still drains instead of waiting.

The processes are small Python stand-ins that append their name to one file when SIGTERM comes:
the file's order is the stop order.  The real stack's Ctrl-C is tests/stack/test_ctrl_c.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from loraplex.tooling.servers import ServerProcess
from loraplex.tooling.stack import Stack
from loraplex.tooling.supervisor import Service

# On SIGTERM: wait ``linger`` seconds (a drain), then write the name and exit.
_STAND_IN = """
import signal, sys, time
name, out, linger = sys.argv[1], sys.argv[2], float(sys.argv[3])
def term(*_):
    time.sleep(linger)
    with open(out, "a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

# Ignores SIGTERM: only SIGKILL ends it.
_STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _argv(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def _started(stack: Stack, name: str, argv: list[str]) -> Service:
    svc = Service(name, argv, stack.run_dir / f"{name}.log")
    stack.services.append(svc)
    svc.start()
    return svc


def _wait_ready(log: Path) -> None:
    for _ in range(200):
        if log.exists() and "ready" in log.read_text():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{log} never said ready")


def test_stop_drains_services_then_late_services_then_servers(tmp_path):
    out = tmp_path / "order.txt"
    stack = Stack(tmp_path)
    for name, linger in (("scheduler", "0"), ("adapter-store", "0"), ("gateway", "0.5")):
        _started(stack, name, _argv(_STAND_IN, name, str(out), linger))
    _started(stack, "decode-0", _argv(_STAND_IN, "decode-0", str(out), "0.3"))
    nats = subprocess.Popen(
        _argv(_STAND_IN, "nats", str(out), "0"), stdout=subprocess.PIPE, text=True
    )
    assert nats.stdout is not None and nats.stdout.readline().strip() == "ready"
    stack.servers.append(ServerProcess("nats", 0, "nats://unused", nats, tmp_path))
    for svc in stack.services:
        _wait_ready(svc.log_path)
    stack.stop(timeout=30)
    order = out.read_text().split()
    assert sorted(order[:2]) == ["decode-0", "gateway"], order
    assert sorted(order[2:4]) == ["adapter-store", "scheduler"], order
    assert order[4:] == ["nats"], order


def test_hurry_kills_a_service_that_does_not_drain(tmp_path):
    stack = Stack(tmp_path)
    svc = _started(stack, "gateway", _argv(_STUBBORN))
    _wait_ready(svc.log_path)
    stopper = threading.Thread(target=stack.stop, kwargs={"timeout": 600})
    stopper.start()
    threading.Event().wait(0.3)
    assert stopper.is_alive(), "stop returned although the service ignores SIGTERM"
    stack.hurry()
    stopper.join(timeout=30)
    assert not stopper.is_alive(), "hurry did not cut the drain short"
    assert svc.proc is not None and svc.proc.returncode == -9  # SIGKILL
