"""Start ``nats-server`` and ``redis-server`` as child processes (for ``loraplex up`` and tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NATS_MAX_PAYLOAD = (
    8 * 1024 * 1024
)  # raised from the 1 MiB default so KV chunks travel in fewer messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(binary: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )
    if path is None:
        raise FileNotFoundError(
            f"{binary} not found: install it (apt-get install {binary}) or run ./scripts/install-system-deps.sh"
        )
    return path


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
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
    with open(data_dir / "nats.log", "ab") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [_find("nats-server"), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
    _wait_port(port, proc, "nats-server")
    return ServerProcess("nats", port, f"nats://127.0.0.1:{port}", proc, data_dir)


def start_redis(data_dir: Path, port: int | None = None, appendonly: bool = True) -> ServerProcess:
    """redis-server on loopback with AOF persistence (everysec) in ``data_dir``."""
    port = port or free_port()
    data_dir = data_dir.resolve()  # redis chdirs into --dir before opening its log file
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        _find("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_port(port, proc, "redis-server")
    return ServerProcess("redis", port, f"redis://127.0.0.1:{port}/0", proc, data_dir)
