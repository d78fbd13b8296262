"""An init's duties, for ``loraplex up`` run as PID 1 (``docker run IMAGE loraplex up`` without
``--init``).

In a PID namespace every orphan is reparented to PID 1, and PID 1 must reap it: a launcher that
only waits for the children it started leaves the rest as zombies.  Worse, the services a dead
fork server (``zygote.py``) started would be reparented to the launcher and never reaped, so it
would see them alive forever and its supervisor would never restart one that exits.  PID 1 also
gets no signal it has no handler for, so the kernel's default actions do not apply to it.

So, as ``tini`` does, ``run_as_init`` forks: the child runs the launcher as PID 2, in its own
process group (the terminal's foreground group when there is one, so a Ctrl-C reaches it once, as
it would without an init); PID 1 forwards stop signals to it, reaps every process that ends, and
exits with the launcher's exit code (128 + N when a signal N ended it).  Orphans then end with
their parent gone, as outside a container: the launcher's polling sees them exit (``forked.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

# Forwarded to the launcher: what docker stop, systemd and a terminal send.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip


def needed() -> bool:
    """Whether this process is PID 1 of its namespace (nobody else would reap its orphans)."""
    return os.getpid() == 1


def run_as_init(run: Callable[[], int]) -> int:
    """Run ``run`` in a child process while this one forwards signals and reaps; returns the
    child's exit code (128 + N for a signal N).  Only the child returns from ``run``."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            _take_terminal()
            code = run()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # a crash is reported as Python would, then a plain exit code
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    return _reap_until(child)


def _take_terminal() -> None:
    """Lead a process group of its own, and make it the terminal's foreground group: a Ctrl-C is
    then delivered to the launcher once (by the terminal), not also by the init forwarding it."""
    os.setpgid(0, 0)
    if not os.isatty(0):
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may not tcsetpgrp
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(0, os.getpgrp())
    finally:
        signal.signal(signal.SIGTTOU, old)


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _reap_until(child: int) -> int:
    """Reap every process that ends (the launcher's descendants and any orphan) until ``child``
    has; its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # a forwarded signal's handler runs, then it waits on
        except ChildProcessError:
            return 1  # no children left at all: the launcher is gone without a status
        if pid != child:
            continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code
