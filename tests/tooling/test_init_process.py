"""``run_as_init``: ``loraplex up`` as PID 1 reaps orphans, forwards signals and exits as its
launcher does.  PID 1's part in reparenting is played by a child subreaper (``prctl``), which
orphans are reparented to just as they are to PID 1."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import ctypes, os, signal, sys, time
    from loraplex.tooling.init_process import run_as_init

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: orphans come here

    def state(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # gone while read
            return "gone"

    def orphan():
        # a grandchild whose parent exits first: it ends reparented to the init, and a zombie
        # unless the init reaps it
        r, w = os.pipe()
        parent = os.fork()
        if parent == 0:
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                os._exit(0)
            os._exit(0)
        os.waitpid(parent, 0)
        os.close(w)
        pid = int(os.read(r, 64))
        deadline = time.monotonic() + 5
        while state(pid) != "gone" and time.monotonic() < deadline:
            time.sleep(0.05)
        return state(pid)

    def run():
        print("launcher", os.getpid() != INIT, os.getpgrp() == os.getpid(), flush=True)
        print("orphan", orphan(), flush=True)
        mode = sys.argv[1]
        if mode == "signal":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
            print("ready", flush=True)
            time.sleep(30)
            return 1
        if mode == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        return 7

    INIT = os.getpid()
    sys.exit(run_as_init(run))
    """
)


def _start(mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, text=True)


def test_orphans_are_reaped_and_the_launchers_exit_code_is_the_inits() -> None:
    proc = _start("exit")
    out, _ = proc.communicate(timeout=30)
    # the launcher runs in a child of the init, in its own process group
    assert "launcher True True" in out, out
    assert "orphan gone" in out, out  # not "orphan Z": a zombie nobody reaps
    assert proc.returncode == 7


def test_a_stop_signal_reaches_the_launcher_and_a_killed_one_reads_as_128_plus_n() -> None:
    proc = _start("signal")
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines = []
    while "ready\n" not in lines and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
        if not lines[-1]:
            break  # it exited
    assert "ready\n" in lines, lines
    proc.send_signal(signal.SIGTERM)  # to the init, as docker stop sends it to PID 1
    assert proc.wait(timeout=30) == 3  # the launcher's handler ran and its exit code came back
    proc = _start("killed")
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
