"""Start ``nats-server`` and ``redis-server`` as child processes (for ``loraplex up`` and tests).

``start_nats`` and ``start_redis`` run them in their own session, as the services run, so a
terminal's Ctrl-C (SIGINT to the whole foreground process group) does not kill them before the
services that need them have drained: ``loraplex up`` stops them last (``Stack.stop``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loraplex.tooling.ports import free_port, free_ports

T = TypeVar("T")
NATS_MAX_PAYLOAD = (
    8 * 1024 * 1024
)  # raised from the 1 MiB default so KV chunks travel in fewer messages


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
            [_find("nats-server"), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C must not reach it (module doc)
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
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )  # own session: Ctrl-C must not reach it (module doc)
    _wait_port(port, proc, "redis-server")
    return ServerProcess("redis", port, f"redis://127.0.0.1:{port}/0", proc, data_dir)


# --- Several machines' worth of servers on loopback: a NATS cluster, Redis with Sentinel -------


def _http_json(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=1.0) as r:
        return json.loads(r.read())


class _Exited(RuntimeError):
    """A server process died while it was being waited for (often: its port was taken)."""


def _until(
    check: Callable[[], bool], what: str, timeout: float, procs: tuple[ServerProcess, ...] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if p.proc.poll() is not None:
                raise _Exited(f"{p.name} exited with code {p.proc.returncode} (see {p.data_dir})")
        try:
            if check():
                return
        except Exception:  # not up yet: refused, reset, an empty answer
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g}s")
        time.sleep(0.1)


def _wait_listening(node: ServerProcess, timeout: float = 15.0) -> None:
    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", node.port), timeout=0.2):
            return True

    _until(listening, f"{node.name} did not listen on port {node.port}", timeout, (node,))


def _fresh_dir(d: Path) -> Path:
    """An empty directory (a failed earlier attempt may have left a store or a config)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _retry_ports(start: Callable[[], T], attempts: int = 3) -> T:
    """Start a set of servers on fresh free ports again when one died at start-up: another
    process may take a port between our probe and the server's bind."""
    for attempt in range(attempts):
        try:
            return start()
        except _Exited:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@dataclass
class NatsCluster:
    """``n`` nats-servers routed to each other; a client given ``url`` (all of them) fails over."""

    nodes: list[ServerProcess]
    monitor_ports: list[int]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All nodes, comma-separated: what ``--nats-url`` takes."""
        return ",".join(self.urls)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash, not a clean shutdown)."""
        self.nodes[i].proc.kill()
        self.nodes[i].proc.wait()

    def restart(self, i: int, timeout: float = 15.0) -> None:
        """Start node ``i`` again from its own config, and wait until it has rejoined the routes."""
        node = self.nodes[i]
        if node.proc.poll() is None:
            self.kill(i)
        node.proc = _spawn_nats(node.data_dir / "nats.conf", node.data_dir)
        _wait_port(node.port, node.proc, f"nats-server {i}")
        self.wait_routes(timeout)

    def wait_routes(self, timeout: float = 15.0) -> None:
        """Every live node routes to every other live node."""
        live = tuple(n for n in self.nodes if n.proc.poll() is None)
        alive = [p for p, n in zip(self.monitor_ports, self.nodes, strict=True) if n in live]
        for port in alive:
            _until(
                lambda port=port: (
                    _http_json(f"http://127.0.0.1:{port}/routez")["num_routes"] >= len(alive) - 1
                ),
                f"nats node on monitor port {port} did not route to {len(alive) - 1} peers",
                timeout,
                live,  # a node that died (its port was taken) raises _Exited at once
            )

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """JetStream's meta group has a leader that every live node follows and that sees every
        other live node current (before that, a replicated stream finds no peers for placement)."""
        live = [(p, i) for i, (p, n) in enumerate(zip(self.monitor_ports, self.nodes, strict=True))
                if n.proc.poll() is None]  # fmt: skip

        def ready() -> bool:
            metas = [_http_json(f"http://127.0.0.1:{p}/jsz")["meta_cluster"] for p, _ in live]
            leader = metas[0].get("leader")
            if not leader or any(m.get("leader") != leader for m in metas):
                return False
            # server names end in -<index> (start_nats_cluster); only the leader lists replicas
            lead = int(leader.rsplit("-", 1)[1])
            replicas = next(m for m, (_, i) in zip(metas, live, strict=True) if i == lead).get(
                "replicas", []
            )
            return sum(1 for r in replicas if r.get("current")) >= len(live) - 1

        _until(ready, "JetStream's meta group did not settle", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _spawn_nats(conf: Path, data_dir: Path) -> subprocess.Popen:
    with open(data_dir / "nats.log", "ab") as log:
        return subprocess.Popen(
            [_find("nats-server"), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C must not reach it (module doc)
        )


def start_nats_cluster(
    data_dir: Path, n: int = 3, max_payload: int = NATS_MAX_PAYLOAD, name: str = "loraplex"
) -> NatsCluster:
    """``n`` nats-servers on loopback, each routed to the others, with clustered JetStream
    (cluster ``name``); returns once every node routes to every other."""
    return _retry_ports(lambda: _start_nats_cluster(data_dir.resolve(), n, max_payload, name))


def _start_nats_cluster(data_dir: Path, n: int, max_payload: int, name: str) -> NatsCluster:
    free = free_ports(3 * n)
    ports, cports, mports = free[:n], free[n : 2 * n], free[2 * n :]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cports)
    nodes: list[ServerProcess] = []
    try:
        for i in range(n):
            d = _fresh_dir(data_dir / f"nats-{i}")
            conf = d / "nats.conf"
            conf.write_text(
                f'server_name: "{name}-{i}"\nlisten: "127.0.0.1:{ports[i]}"\n'
                f'http: "127.0.0.1:{mports[i]}"\nmax_payload: {max_payload}\n'
                f'jetstream {{\n  store_dir: "{d / "jetstream"}"\n}}\n'
                f'cluster {{\n  name: "{name}"\n  listen: "127.0.0.1:{cports[i]}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
            proc = _spawn_nats(conf, d)
            nodes.append(
                ServerProcess(f"nats-{i}", ports[i], f"nats://127.0.0.1:{ports[i]}", proc, d)
            )
            _wait_listening(nodes[-1])
        cluster = NatsCluster(nodes, mports)
        cluster.wait_routes()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return cluster


def _redis_call(port: int, *args: str) -> object:
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, decode_responses=True) as r:
        return r.execute_command(*args)


def _replication(port: int) -> dict:
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, decode_responses=True) as r:
        return r.info("replication")


@dataclass
class SentinelSet:
    """A Redis primary, its replica and three Sentinels that watch them (quorum 2)."""

    redis_nodes: list[ServerProcess]  # [first primary, first replica]
    sentinels: list[ServerProcess]
    master_name: str = "loraplex"

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL naming every Sentinel: what ``--redis-url`` takes."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def primary_port(self) -> int:
        """The port the Sentinels name as primary now."""
        port = self.sentinels[0].port
        _, p = _redis_call(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)  # type: ignore[misc]
        return int(p)

    def primary(self) -> ServerProcess:
        port = self.primary_port()
        return next(n for n in self.redis_nodes if n.port == port)

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port."""
        node = self.primary()
        node.proc.kill()
        node.proc.wait()
        return node.port

    def wait_failover(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until the Sentinels name a primary other than ``old_port`` and it answers as a
        master; returns the new primary's port."""
        _until(
            lambda: (
                self.primary_port() != old_port
                and _replication(self.primary_port())["role"] == "master"
            ),
            f"sentinels promoted no replica of {self.master_name}",
            timeout,
        )
        return self.primary_port()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Every Sentinel knows the replica and the two other Sentinels, and the replica is in
        sync: a failover can happen from here on."""
        live = tuple(n for n in [*self.sentinels, *self.redis_nodes] if n.proc.poll() is None)
        for s in self.sentinels:

            def known(port: int = s.port) -> bool:
                import redis

                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0) as r:
                    info = r.sentinel_master(self.master_name)
                return int(info["num-slaves"]) >= 1 and int(info["num-other-sentinels"]) >= 2

            _until(known, f"sentinel {s.port} did not see its replica and peers", timeout, live)
        for node in self.redis_nodes:
            if node.proc.poll() is None and node.port != self.primary_port():
                _until(
                    lambda port=node.port: _replication(port).get("master_link_status") == "up",
                    f"replica {node.port} did not sync",
                    timeout,
                    live,
                )

    def stop(self) -> None:
        for node in [*self.sentinels, *self.redis_nodes]:
            node.stop()


def _sentinel_cmd() -> list[str]:
    try:
        return [_find("redis-sentinel")]  # Debian's redis-sentinel package
    except FileNotFoundError:
        return [_find("redis-server"), "--sentinel"]  # the same binary, run in sentinel mode


def start_redis_sentinel(
    data_dir: Path,
    down_after_ms: int = 500,
    failover_timeout_ms: int = 2000,
    master_name: str = "loraplex",
) -> SentinelSet:
    """A Redis primary (AOF on) with one replica and three Sentinels, all on loopback; returns
    once a failover could happen.  The low timeouts make failover quick enough for tests."""
    return _retry_ports(
        lambda: _start_redis_sentinel(
            data_dir.resolve(), down_after_ms, failover_timeout_ms, master_name
        )
    )


def _start_redis_sentinel(
    data_dir: Path, down_after_ms: int, failover_timeout_ms: int, master_name: str
) -> SentinelSet:
    primary_port, replica_port, *ports = free_ports(5)
    nodes: list[ServerProcess] = []
    sentinels: list[ServerProcess] = []
    try:
        try:
            primary = start_redis(_fresh_dir(data_dir / "redis-0"), port=primary_port)
        except RuntimeError as e:  # it exited: most likely its port was taken meanwhile
            raise _Exited(str(e)) from e
        nodes.append(primary)
        # Redis waits 5 s by default for more replicas before a full sync; there is only one.
        _redis_call(primary.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
        d = _fresh_dir(data_dir / "redis-1")
        args = [
            _find("redis-server"),
            "--port", str(replica_port), "--bind", "127.0.0.1", "--dir", str(d),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-sync-delay", "0",
            "--logfile", str(d / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        nodes.append(
            ServerProcess("redis-1", replica_port, f"redis://127.0.0.1:{replica_port}/0", proc, d)
        )
        _wait_listening(nodes[-1])
        # Each Sentinel is told its peers and the replica up front, so that it need not wait for
        # the hello and INFO rounds (seconds) before it could fail over.
        ids = [os.urandom(20).hex() for _ in range(3)]
        for i, port in enumerate(ports):
            d = _fresh_dir(data_dir / f"sentinel-{i}")
            conf = d / "sentinel.conf"  # Sentinel rewrites it with what it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {master_name} 1\n"
                f"sentinel myid {ids[i]}\n"
                f"sentinel known-replica {master_name} 127.0.0.1 {replica_port}\n"
                + "".join(
                    f"sentinel known-sentinel {master_name} 127.0.0.1 {ports[j]} {ids[j]}\n"
                    for j in range(3)
                    if j != i
                )
            )
            proc = subprocess.Popen(
                [*_sentinel_cmd(), str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            sentinels.append(
                ServerProcess(f"sentinel-{i}", port, f"redis://127.0.0.1:{port}", proc, d)
            )
            _wait_listening(sentinels[-1])
        s = SentinelSet(nodes, sentinels, master_name)
        s.wait_ready()
    except BaseException:
        for node in [*sentinels, *nodes]:
            node.stop()
        raise
    return s
