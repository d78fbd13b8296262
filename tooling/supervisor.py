"""Child services that heal: a process that exits is started again, with backoff and a log line.

``loraplex up`` runs every service as a child ``Service``; a ``Supervisor`` thread polls them and
restarts the ones that exited (a crash, an OOM kill, a worker that left on a fatal CUDA error),
so one dead process never takes the stack down.  Only the launcher's own Ctrl-C or SIGTERM stops
everything.  Backoff doubles for a service that keeps dying soon after its start and resets once a
run lasted ``stable_after_s``, as systemd's and Kubernetes' restart policies do.

A crash loop is a service that cannot come up.  One that came up (its ``/ready`` answered 200 for
``ready_stable_s``) and then exited is restarted after the first delay again.  One that was ready
at all and was then killed by a signal from outside (SIGKILL, SIGTERM, SIGINT: an operator, the OOM
killer, a chaos test) is restarted at once: it did not fail by itself, and every second of delay
lengthens the outage of a healthy service while its requests wait for it (a prefill worker's
requests fail after the scheduler's ``--unavailable-timeout``).  A crash (a non-zero exit code,
SIGSEGV, SIGABRT) still backs off, and so does a kill before the service was ever ready.

That grace is granted ``kills_at_once`` times in a row (8): a service the OOM killer shoots again
and again soon after it comes up would otherwise restart at once forever, while a few kills in a
row (an operator, a chaos run, bench/reliability.py's six) keep their quick restarts.
``Service.quick_kills`` counts outside kills of runs that were up less than ``stable_after_s``;
past ``kills_at_once`` they back off as ``delay(quick_kills - kills_at_once)`` (0.5 s, 1 s,
...).  Only a run that was up for ``stable_after_s``, whatever ended it, resets the count.  Up counts from the run's first ready
probe (from its start when it had none): a slow start (a worker loading its model for 40 s) is no
healthy run, and an OOM kill may come later than ``ready_stable_s`` (5 s) after readiness, once
load fills the worker's memory, so neither may clear an OOM loop.  Other exits in between (a crash,
a kill before ready) leave the count as it is: they say nothing about health.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraplex.tooling.forked import ServiceProcess, exec_process

# Signals another process sends; a service's own fault (SIGSEGV, SIGABRT, SIGBUS) is not one.
OUTSIDE_KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_after_s: float = 30.0  # a run at least this long resets the backoff
    ready_stable_s: float = 5.0  # so does a run that was ready (``Service.ready_url``) this long
    probe_interval_s: float = 0.5  # between readiness probes of a service not ready yet
    after_kill_s: float = 0.0  # before restarting a service killed from outside after it came up,
    # up to ``kills_at_once`` times in a row (``Service.quick_kills``); later ones back off
    kills_at_once: int = 8

    def delay(self, quick_failures: int) -> float:
        """Seconds to wait before restart number ``quick_failures`` (1-based) in a row."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, quick_failures - 1))


@dataclass
class Service:
    """One child process of the stack and its restart bookkeeping."""

    name: str
    argv: list[str]
    log_path: Path
    proc: ServiceProcess | None = None
    started_at: float = 0.0  # monotonic
    restarts: int = 0
    quick_failures: int = 0  # exits in a row before the service came up (``_came_up``)
    quick_kills: int = 0  # outside kills of runs up < ``stable_after_s`` since the last long run
    restart_at: float | None = None  # monotonic time of the pending restart
    history: list[int] = field(default_factory=list)  # pids, oldest first
    ready_url: str | None = None  # answers 200 once the service came up (None: not probed)
    ready_at: float | None = None  # monotonic time its current run was first seen ready
    next_probe_at: float = 0.0
    # exec the argv (``exec_process``) or fork it from a pre-imported server (``FORK_SERVER.start``)
    starter: Callable[[list[str], Path], ServiceProcess] = exec_process

    def start(self) -> ServiceProcess:
        self.proc = self.starter(self.argv, self.log_path)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.ready_at = None
        self.next_probe_at = self.started_at
        self.history.append(self.proc.pid)
        return self.proc

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def http_ready(url: str, timeout_s: float = 0.5) -> bool:
    """True when ``url`` answers 200 within ``timeout_s`` (short: a probe must not stall the
    supervisor's loop)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


class Supervisor:
    """Restarts exited services; ``poll`` is one pass (tests call it), ``start`` runs a thread."""

    def __init__(
        self,
        services: list[Service],
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] | None = None,
        interval_s: float = 0.2,
        probe: Callable[[str], bool] = http_ready,
    ) -> None:
        self.services = services
        self.policy = policy or RestartPolicy()
        self.say = say or (lambda line: print(line, flush=True))
        self.probe = probe
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one pass at a time; stop() waits for the pass
        self._thread: threading.Thread | None = None

    def poll(self, now: float | None = None) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            now = time.monotonic() if now is None else now
            for svc in self.services:
                self._check(svc, now)

    def _check(self, svc: Service, now: float) -> None:
        if svc.restart_at is None:
            if not svc.exited:
                self._probe(svc, now)
                return
            self._schedule(svc, now)
        if now >= svc.restart_at:  # type: ignore[operator]
            svc.start()
            svc.restarts += 1  # after start: a reader that sees the count sees the new proc
            self.say(f"loraplex: restarted {svc.name} (pid {svc.proc.pid})")  # type: ignore[union-attr]

    def _schedule(self, svc: Service, now: float) -> None:
        ran = now - svc.started_at
        code = svc.proc.returncode  # type: ignore[union-attr]
        shot = self._was_up(svc, now) and -code in OUTSIDE_KILLS
        if self._up_for(svc, now) >= self.policy.stable_after_s:  # a long healthy run
            svc.quick_kills = 0
        elif shot:
            svc.quick_kills += 1
        if shot or self._came_up(svc, now):
            svc.quick_failures = 1
        else:
            svc.quick_failures += 1
        delay = self._shot_delay(svc) if shot else self.policy.delay(svc.quick_failures)
        svc.restart_at = now + delay
        self.say(
            f"loraplex: {svc.name} exited with code {code} after {ran:.1f}s; "
            f"restarting in {delay:.1f}s (log: {svc.log_path})"
        )

    def _shot_delay(self, svc: Service) -> float:
        """At once for the first ``kills_at_once`` outside kills in a row; an OOM loop backs off."""
        if svc.quick_kills <= self.policy.kills_at_once:
            return self.policy.after_kill_s
        return self.policy.delay(svc.quick_kills - self.policy.kills_at_once)

    def _probe(self, svc: Service, now: float) -> None:
        if svc.ready_url is None or svc.ready_at is not None or now < svc.next_probe_at:
            return
        svc.next_probe_at = now + self.policy.probe_interval_s
        if self.probe(svc.ready_url):
            svc.ready_at = now

    def _was_up(self, svc: Service, now: float) -> bool:
        """The run that just ended had come up at all: ready once, or running for a while."""
        return svc.ready_at is not None or now - svc.started_at >= self.policy.stable_after_s

    def _up_for(self, svc: Service, now: float) -> float:
        """Seconds the run that just ended was up: since it was first ready, else since its start."""
        return now - (svc.started_at if svc.ready_at is None else svc.ready_at)

    def _came_up(self, svc: Service, now: float) -> bool:
        """The run that just ended was healthy for a while: its exit is no crash loop."""
        if now - svc.started_at >= self.policy.stable_after_s:
            return True
        return svc.ready_at is not None and now - svc.ready_at >= self.policy.ready_stable_s

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.poll()

        self._thread = threading.Thread(target=loop, name="loraplex-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No restart after this returns (the caller then stops the services)."""
        self._stop.set()
        with self._lock:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
