"""Start ``nats-server`` and ``redis-server`` as child processes (for ``loraplex up`` and tests).

``start_nats`` and ``start_redis`` run them in their own session, as the services run, so a
terminal's Ctrl-C (SIGINT to the whole foreground process group) does not kill them before the
services that need them have drained: ``loraplex up`` stops them last (``Stack.stop``).  Several
machines' worth of them on loopback: ``nats_cluster.py`` and ``redis_sentinel.py``, built from the
helpers here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loraplex.tooling.ports import free_port

T = TypeVar("T")
NATS_MAX_PAYLOAD = (
    8 * 1024 * 1024
)  # raised from the 1 MiB default so KV chunks travel in fewer messages


def find_binary(binary: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )
    if path is None:
        raise FileNotFoundError(
            f"{binary} not found: install it (apt-get install {binary}) or run ./scripts/install-system-deps.sh"
        )
    return path


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    """Until ``proc`` listens on ``port``; it is killed if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


@dataclass
class ServerProcess:
    name: str
    port: int
    url: str
    proc: subprocess.Popen
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_nats(conf: Path, data_dir: Path) -> subprocess.Popen:
    with open(data_dir / "nats.log", "ab") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [find_binary("nats-server"), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C must not reach it (module doc)
        )


def start_nats(
    data_dir: Path, port: int | None = None, max_payload: int = NATS_MAX_PAYLOAD
) -> ServerProcess:
    """nats-server on loopback with JetStream and a raised max_payload."""
    port = port or free_port()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\nmax_payload: {max_payload}\n'
        f'jetstream {{\n  store_dir: "{data_dir / "jetstream"}"\n}}\n'
    )
    proc = spawn_nats(conf, data_dir)
    wait_port(port, proc, "nats-server")
    return ServerProcess("nats", port, f"nats://127.0.0.1:{port}", proc, data_dir)


def start_redis(data_dir: Path, port: int | None = None, appendonly: bool = True) -> ServerProcess:
    """redis-server on loopback with AOF persistence (everysec) in ``data_dir``."""
    port = port or free_port()
    data_dir = data_dir.resolve()  # redis chdirs into --dir before opening its log file
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )  # own session: Ctrl-C must not reach it (module doc)
    wait_port(port, proc, "redis-server")
    return ServerProcess("redis", port, f"redis://127.0.0.1:{port}/0", proc, data_dir)


# --- Helpers of the clusters (nats_cluster.py, redis_sentinel.py) ------------------------------


class ServerExited(RuntimeError):
    """A server process died while it was being waited for (often: its port was taken)."""


def until(
    check: Callable[[], bool], what: str, timeout: float, procs: tuple[ServerProcess, ...] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.proc.poll() is not None:
                raise ServerExited(
                    f"{p.name} exited with code {p.proc.returncode} (see {p.data_dir})"
                )
        try:
            if check():
                return
        except Exception:  # not up yet: refused, reset, an empty answer
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g}s")
        time.sleep(0.1)


def wait_listening(node: ServerProcess, timeout: float = 15.0) -> None:
    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", node.port), timeout=0.2):
            return True

    until(listening, f"{node.name} did not listen on port {node.port}", timeout, (node,))


def fresh_dir(d: Path) -> Path:
    """An empty directory (a failed earlier attempt may have left a store or a config)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def retry_ports(start: Callable[[], T], attempts: int = 3) -> T:
    """Start a set of servers on fresh free ports again when one died at start-up: another
    process may take a port between our probe and the server's bind."""
    for attempt in range(attempts):
        try:
            return start()
        except ServerExited:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
