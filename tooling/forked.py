"""Services forked from a server that imported torch once, instead of each exec'ing Python anew.

A worker process spends ~2.5 s of CPU importing torch and the engine before it parses its first
flag, the gateway and the adapter store ~1 s importing FastAPI.  ``loraplex up`` starts five or
more services and its supervisor starts a crashed one again: that import was paid every time, and
a dead worker stayed away that much longer.  A ``ForkServer`` starts one small server process
(``zygote.py``) on first use, which imports those modules once; each service is then a fork of it
that runs ``python -m module args`` as an exec'd interpreter would:

- its own session (``setsid``: a Ctrl-C at the terminal reaches the launcher, not the services);
- stdout and stderr appended to its log;
- the launcher's environment and working directory *at the time of the start*;
- ``atexit`` handlers run at exit; its exit code (``-N`` for signal N) is ``returncode``.

Importing torch does not initialise CUDA, so a forked worker initialises its GPU itself, as an
exec'd one does.  loraplex reads its ``LORAPLEX_*`` variables at use (``loraplex.env``), not at
import, so a variable set for one start is seen by that start.  Requests and events are JSON lines
on the server's stdin and stdout.

``LORAPLEX_FORK_SERVER=0`` execs every service instead; so does an argv that is not
``python -m module ...``.  If the server itself dies, the services it forked run on; their exits
are then seen by polling (code 255: the status went with the server), and the next start begins a
new server.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Protocol

from loraplex import env

ORPHAN_POLL_S = 0.1  # how often a service whose server died is looked at
LOST_STATUS = 255  # the exit code of a service whose status went with its server


class ForkServerGone(OSError):
    """The fork server exited before it answered a start."""


class ServiceProcess(Protocol):
    """The part of ``subprocess.Popen`` a ``Service`` and a ``Stack`` use."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class ForkedProcess:
    """A forked service, seen through ``subprocess.Popen``'s surface; its server reports its exit."""

    def __init__(self, pid: int, argv: list[str]) -> None:
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None
        self._exited = threading.Event()
        self.orphaned = False  # its server died: poll the pid instead

    def exited(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        if self.returncode is None and self.orphaned and not _alive(self.pid):
            self.exited(LOST_STATUS)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            step = ORPHAN_POLL_S if self.orphaned else 0.5  # bounded: its server may die meanwhile
            self._exited.wait(step if left is None else min(step, left))
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return  # as Popen: a process already reaped gets no signal (its pid may be reused)
        # It may have exited and been reaped by its server a moment ago (the event is on its
        # way): the pid is not reused that fast, and a gone process makes this a no-op.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def module_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(module, args)`` of ``[python, -m, module, *args]`` run by this interpreter, else None."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2], argv[3:]
    return None


class ForkServer:
    """Starts services as forks of one pre-imported server, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one start at a time; guards the maps below
        self._server: subprocess.Popen | None = None
        self._ids = itertools.count()
        self._replies: dict[int, dict] = {}  # type: ignore[type-arg]
        self._replied = threading.Condition(self._lock)
        self._procs: dict[int, ForkedProcess] = {}
        self.broken = False  # the server refused to fork (or could not start): exec instead
        self.server_argv = [sys.executable, "-m", "loraplex.tooling.zygote"]

    def start(self, argv: list[str], log_path: Path) -> ServiceProcess:
        target = module_of(argv)
        if target is None or self.broken or not env.FORK_SERVER.get():
            return exec_process(argv, log_path)
        try:
            return self._fork(*target, argv, log_path)
        except ForkServerGone as e:  # it could not start, or refused (EXIT_CUDA): exec from now on
            self.broken = True
            print(f"loraplex: {e}; starting services with exec from now on", flush=True)
            return exec_process(argv, log_path)

    def _fork(self, module: str, args: list[str], argv: list[str], log_path: Path) -> ForkedProcess:
        with self._lock:
            server = self._running()
            request_id = next(self._ids)
            request = {
                "start": request_id, "module": module, "args": args, "env": dict(os.environ),
                "cwd": os.getcwd(), "log": str(log_path),
            }  # fmt: skip
            assert server.stdin is not None
            try:
                server.stdin.write(json.dumps(request).encode() + b"\n")
                server.stdin.flush()
            except BrokenPipeError as e:
                raise ForkServerGone("the fork server exited") from e
            while request_id not in self._replies:
                if not self._replied.wait(timeout=1.0) and server.poll() is not None:
                    raise ForkServerGone(f"the fork server exited with code {server.returncode}")
            reply = self._replies.pop(request_id)
        if "proc" not in reply:
            raise OSError(f"the fork server could not start {module}: {reply.get('error')}")
        proc: ForkedProcess = reply["proc"]
        proc.args = argv
        return proc

    def _running(self) -> subprocess.Popen:
        """The server, started now if it is not running (called under the lock)."""
        if self._server is not None and self._server.poll() is None:
            return self._server
        server = subprocess.Popen(
            self.server_argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self._server = server
        threading.Thread(
            target=self._read, args=(server.stdout,), name="loraplex-fork-server", daemon=True
        ).start()
        return server

    def _read(self, events: IO[bytes]) -> None:
        """The server's events: replies to starts, and exits of what it forked."""
        for line in events:
            event = json.loads(line)
            with self._lock:
                if "exited" in event:
                    proc = self._procs.pop(event["exited"], None)
                    if proc is not None:
                        proc.exited(event["code"])
                    continue
                if "started" in event:  # registered before its exit event can come
                    event["proc"] = self._procs[event["pid"]] = ForkedProcess(event["pid"], [])
                self._replies[event.get("started", event.get("failed"))] = event
                self._replied.notify_all()
        with self._lock:  # the server is gone: what it forked runs on, watched by polling
            for proc in self._procs.values():
                proc.orphaned = True
            self._procs.clear()
            self._replied.notify_all()


def exec_process(argv: list[str], log_path: Path) -> ServiceProcess:
    """The plain way: exec ``argv`` in its own session, output appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


# One per launcher process: each server costs one import of what ``zygote.PRELOAD`` names.
FORK_SERVER = ForkServer()
