"""A Redis primary, its replica and three Sentinels on loopback: several machines' worth of Redis
for the failover tests and benchmarks (``--redis-url redis+sentinel://...``)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from loraplex.tooling.ports import free_ports
from loraplex.tooling.servers import (
    ServerExited,
    ServerProcess,
    find_binary,
    fresh_dir,
    retry_ports,
    start_redis,
    until,
    wait_listening,
)


def _redis_call(port: int, *args: str) -> object:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, decode_responses=True) as r:
        return r.execute_command(*args)


def _replication(port: int) -> dict:
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
        until(
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
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0) as r:
                    info = r.sentinel_master(self.master_name)
                return int(info["num-slaves"]) >= 1 and int(info["num-other-sentinels"]) >= 2

            until(known, f"sentinel {s.port} did not see its replica and peers", timeout, live)
        for node in self.redis_nodes:
            if node.proc.poll() is None and node.port != self.primary_port():
                until(
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
        return [find_binary("redis-sentinel")]  # Debian's redis-sentinel package
    except FileNotFoundError:
        return [find_binary("redis-server"), "--sentinel"]  # the same binary, run in sentinel mode


def start_redis_sentinel(
    data_dir: Path,
    down_after_ms: int = 500,
    failover_timeout_ms: int = 2000,
    master_name: str = "loraplex",
) -> SentinelSet:
    """A Redis primary (AOF on) with one replica and three Sentinels, all on loopback; returns
    once a failover could happen.  The low timeouts make failover quick enough for tests."""
    return retry_ports(
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
            primary = start_redis(fresh_dir(data_dir / "redis-0"), port=primary_port)
        except RuntimeError as e:  # it exited: most likely its port was taken meanwhile
            raise ServerExited(str(e)) from e
        nodes.append(primary)
        # Redis waits 5 s by default for more replicas before a full sync; there is only one.
        _redis_call(primary.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
        d = fresh_dir(data_dir / "redis-1")
        args = [
            find_binary("redis-server"),
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
        wait_listening(nodes[-1])
        # Each Sentinel is told its peers and the replica up front, so that it need not wait for
        # the hello and INFO rounds (seconds) before it could fail over.
        ids = [os.urandom(20).hex() for _ in range(3)]
        for i, port in enumerate(ports):
            d = fresh_dir(data_dir / f"sentinel-{i}")
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
            wait_listening(sentinels[-1])
        s = SentinelSet(nodes, sentinels, master_name)
        s.wait_ready()
    except BaseException:
        for node in [*sentinels, *nodes]:
            node.stop()
        raise
    return s
