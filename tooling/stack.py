"""The processes of one stack that ``loraplex up`` (and tests, benchmarks) started: the servers
(nats-server, redis-server) and the services, which a ``Supervisor`` restarts when they exit.

``stop`` drains in order: the gateway and the workers first (SIGTERM: the gateway stops taking
requests, workers finish what runs, so streams in flight end with ``[DONE]``), then the scheduler
and the adapter store, and the servers every service talks through last, so no service loses
NATS or Redis while it drains.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loraplex.tooling.forked import FORK_SERVER, ServiceProcess
from loraplex.tooling.servers import ServerProcess
from loraplex.tooling.supervisor import RestartPolicy, Service, Supervisor, python_module

# Seconds each stop phase waits before SIGKILL: the gateway's own graceful shutdown lets
# responses in flight run for 30 s (``timeout_graceful_shutdown``), plus time to close.
DRAIN_S = 40.0
# Services that requests in flight still need while the others drain; they stop second.
STOP_LATE = ("scheduler", "adapter-store")


@dataclass
class Stack:
    run_dir: Path
    servers: list[ServerProcess] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    # service name -> base URL of its /health, /ready, /metrics listener (scheduler, workers)
    status: dict[str, str] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    _hurry: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def procs(self) -> list[tuple[str, ServiceProcess]]:
        """(name, current process) of every service started (a restart replaces the process)."""
        return [(s.name, s.proc) for s in self.services if s.proc is not None]

    def proc(self, name: str) -> ServiceProcess:
        return next(p for n, p in self.procs if n == name)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def spawn(
        self, name: str, module: str, *args: str, ready_url: str | None = None
    ) -> ServiceProcess:
        """Start ``python -m module args`` (a fork of the pre-imported server: ``forked.py``);
        ``ready_url`` answers 200 once it came up (the supervisor's sign that a later exit is no
        crash loop)."""
        argv, log = python_module(module, *args), self.run_dir / f"{name}.log"
        svc = Service(name, argv, log, ready_url=ready_url, starter=FORK_SERVER.start)
        self.services.append(svc)
        return svc.start()

    def check_alive(self) -> None:
        """While starting: a service that exits is a broken configuration, not a crash to heal."""
        for svc in self.services:
            if svc.exited and svc.restart_at is None:
                raise RuntimeError(
                    f"{svc.name} exited with code {svc.proc.returncode}:\n{svc.log_tail()}"  # type: ignore[union-attr]
                )

    def supervise(self, policy: RestartPolicy | None = None) -> Supervisor:
        """Restart services that exit from now on (a thread), until ``stop``."""
        self.supervisor = Supervisor(self.services, policy)
        self.supervisor.start()
        return self.supervisor

    def stop(self, timeout: float = DRAIN_S) -> None:
        """Drain and stop everything (see the module doc); each phase waits at most ``timeout``
        seconds, or less once ``hurry`` was called, before it kills what is left."""
        if self.supervisor is not None:
            self.supervisor.stop()
        first = [p for n, p in self.procs if not n.startswith(STOP_LATE)]
        late = [p for n, p in self.procs if n.startswith(STOP_LATE)]
        for phase in (first, late):
            self._terminate(phase, timeout)
        for server in reversed(self.servers):
            server.stop()

    def hurry(self) -> None:
        """Cut a running ``stop`` short (a second Ctrl-C): kill instead of waiting."""
        self._hurry.set()

    def _terminate(self, procs: list[ServiceProcess], timeout: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if self._hurry.wait(0.1):
                break
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
