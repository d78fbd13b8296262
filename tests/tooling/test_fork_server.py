"""Services forked from the pre-imported server (``tooling/forked.py``, ``tooling/zygote.py``) run
as ``python -m module`` would: the caller's environment and directory at the start, their log,
atexit handlers, exit codes and signals as ``Popen`` reports them, their own command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraplex.tooling.forked import LOST_STATUS, ForkedProcess, ForkServer
from loraplex.tooling.zygote import EXIT_CUDA

# ``python -m fork_probe CODE [SLEEP_S]``: says what it sees, sleeps, exits with CODE ("raise":
# an uncaught exception); an atexit handler says "bye".
PROBE = """
import atexit, os, sys, time
atexit.register(lambda: print("bye", flush=True))
print(f"argv={sys.argv[1:]} cwd={os.getcwd()} probe={os.environ.get('FORK_PROBE')}", flush=True)
print("torch preloaded" if "torch" in sys.modules else "torch not imported", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
if sys.argv[1] == "raise":
    raise RuntimeError("the probe failed")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(autouse=True)
def probe_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fork_probe.py").write_text(PROBE)
    monkeypatch.delenv("LORAPLEX_FORK_SERVER", raising=False)


@pytest.fixture(scope="module")
def server():
    """One server for the module's tests (each costs an import of torch and the services)."""
    server = ForkServer()
    yield server
    if server._server is not None:
        server._server.kill()
        server._server.wait()


def _probe(*args: str) -> list[str]:
    return [sys.executable, "-m", "fork_probe", *args]


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_forked_service_runs_as_python_dash_m_would(server, tmp_path, monkeypatch):
    log = tmp_path / "probe.log"
    first = server.start(_probe("0"), log)
    assert isinstance(first, ForkedProcess) and first.wait(60) == 0
    monkeypatch.setenv("FORK_PROBE", "set after the server started")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "fork_probe.py").write_text(PROBE)
    second = server.start(_probe("3", "1"), log)
    _wait_for(lambda: b"fork_probe" in Path(f"/proc/{second.pid}/cmdline").read_bytes())
    cmdline = Path(f"/proc/{second.pid}/cmdline").read_bytes().decode()
    assert cmdline.startswith(f"{sys.executable} -m fork_probe 3 1"), cmdline  # ps shows it
    assert second.wait(30) == 3 and second.returncode == 3 and second.poll() == 3
    lines = log.read_text().splitlines()
    assert lines[:3] == [f"argv=['0'] cwd={tmp_path} probe=None", "torch preloaded", "bye"]
    assert lines[3:] == [
        f"argv=['3', '1'] cwd={tmp_path / 'elsewhere'} probe=set after the server started",
        "torch preloaded",
        "bye",
    ]


def test_signals_and_failures_read_as_popen_reads_them(server, tmp_path):
    log = tmp_path / "probe.log"
    sleeper = server.start(_probe("0", "60"), log)
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(0.2)
    sleeper.terminate()
    assert sleeper.wait(30) == -signal.SIGTERM
    sleeper.kill()  # after the exit: a no-op, as Popen's
    killed = server.start(_probe("0", "60"), log)
    killed.kill()
    assert killed.wait(30) == -signal.SIGKILL
    failed = server.start(_probe("raise"), log)
    assert failed.wait(30) == 1
    assert "RuntimeError: the probe failed" in log.read_text()
    missing = server.start([sys.executable, "-m", "no_such_module_here"], log)
    assert missing.wait(30) == 1
    assert "No module named no_such_module_here" in log.read_text()


def test_anything_but_python_dash_m_and_the_off_switch_exec(tmp_path, monkeypatch):
    server = ForkServer()
    log = tmp_path / "probe.log"
    script = server.start([sys.executable, str(tmp_path / "fork_probe.py"), "4"], log)
    assert isinstance(script, subprocess.Popen) and script.wait(60) == 4
    monkeypatch.setenv("LORAPLEX_FORK_SERVER", "0")
    execd = server.start(_probe("5"), log)
    assert isinstance(execd, subprocess.Popen) and execd.wait(60) == 5
    assert log.read_text().count("torch not imported") == 2
    assert server._server is None  # nothing forked: no server was started


def test_services_outlive_their_server_and_the_next_start_begins_a_new_one(tmp_path):
    server = ForkServer()  # its own: this test kills it
    log = tmp_path / "probe.log"
    orphan = server.start(_probe("0", "60"), log)
    first_server = server._server
    assert first_server is not None
    first_server.kill()
    first_server.wait()
    _wait_for(lambda: orphan.orphaned)  # type: ignore[attr-defined]
    assert orphan.poll() is None and os.path.exists(f"/proc/{orphan.pid}")
    orphan.kill()
    assert orphan.wait(30) == LOST_STATUS  # its status went with the server
    again = server.start(_probe("6"), log)
    try:
        assert server._server is not first_server and again.wait(60) == 6
    finally:
        server._server.kill()  # type: ignore[union-attr]


def test_a_server_that_cannot_fork_makes_every_start_an_exec(tmp_path):
    """The zygote exits with EXIT_CUDA when a preload initialised CUDA (a fork could not use
    it); any server that dies before it answers leaves the launcher exec'ing, not failing."""
    server = ForkServer()
    server.server_argv = [sys.executable, "-c", f"raise SystemExit({EXIT_CUDA})"]
    log = tmp_path / "probe.log"
    first = server.start(_probe("7"), log)
    assert isinstance(first, subprocess.Popen) and first.wait(60) == 7
    assert server.broken
    second = server.start(_probe("8"), log)
    assert isinstance(second, subprocess.Popen) and second.wait(60) == 8
    assert log.read_text().count("torch not imported") == 2
