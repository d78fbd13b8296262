"""The processes of one stack that ``loraplex up`` (and tests, benchmarks) started: the servers
(nats-server, redis-server) and the services, which a ``Supervisor`` restarts when they exit."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loraplex.tooling.servers import ServerProcess
from loraplex.tooling.supervisor import RestartPolicy, Service, Supervisor, python_module


@dataclass
class Stack:
    run_dir: Path
    servers: list[ServerProcess] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    # service name -> base URL of its /health, /ready, /metrics listener (scheduler, workers)
    status: dict[str, str] = field(default_factory=dict)
    supervisor: Supervisor | None = None

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen]]:
        """(name, current process) of every service started (a restart replaces the process)."""
        return [(s.name, s.proc) for s in self.services if s.proc is not None]

    def proc(self, name: str) -> subprocess.Popen:
        return next(p for n, p in self.procs if n == name)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def spawn(self, name: str, module: str, *args: str) -> subprocess.Popen:
        svc = Service(name, python_module(module, *args), self.run_dir / f"{name}.log")
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

    def stop(self, timeout: float = 15.0) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        procs = [p for _, p in self.procs]
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in reversed(self.servers):
            server.stop()
