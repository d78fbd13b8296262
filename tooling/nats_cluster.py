"""Several nats-servers on loopback routed into one cluster with clustered JetStream: several
machines' worth of NATS for the failover tests and benchmarks (a client given every node fails
over when one dies)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loraplex.tooling.ports import free_ports
from loraplex.tooling.servers import (
    NATS_MAX_PAYLOAD,
    ServerProcess,
    fresh_dir,
    retry_ports,
    spawn_nats,
    until,
    wait_listening,
    wait_port,
)


def _http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=1.0) as r:
        return json.loads(r.read())


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
        node.proc = spawn_nats(node.data_dir / "nats.conf", node.data_dir)
        wait_port(node.port, node.proc, f"nats-server {i}")
        self.wait_routes(timeout)

    def wait_routes(self, timeout: float = 15.0) -> None:
        """Every live node routes to every other live node."""
        live = tuple(n for n in self.nodes if n.proc.poll() is None)
        alive = [p for p, n in zip(self.monitor_ports, self.nodes, strict=True) if n in live]
        for port in alive:
            until(
                lambda port=port: (
                    _http_json(f"http://127.0.0.1:{port}/routez")["num_routes"] >= len(alive) - 1
                ),
                f"nats node on monitor port {port} did not route to {len(alive) - 1} peers",
                timeout,
                live,  # a node that died (its port was taken) raises ServerExited at once
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

        until(ready, "JetStream's meta group did not settle", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_nats_cluster(
    data_dir: Path, n: int = 3, max_payload: int = NATS_MAX_PAYLOAD, name: str = "loraplex"
) -> NatsCluster:
    """``n`` nats-servers on loopback, each routed to the others, with clustered JetStream
    (cluster ``name``); returns once every node routes to every other."""
    return retry_ports(lambda: _start_nats_cluster(data_dir.resolve(), n, max_payload, name))


def _start_nats_cluster(data_dir: Path, n: int, max_payload: int, name: str) -> NatsCluster:
    free = free_ports(3 * n)
    ports, cports, mports = free[:n], free[n : 2 * n], free[2 * n :]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cports)
    nodes: list[ServerProcess] = []
    try:
        for i in range(n):
            d = fresh_dir(data_dir / f"nats-{i}")
            conf = d / "nats.conf"
            conf.write_text(
                f'server_name: "{name}-{i}"\nlisten: "127.0.0.1:{ports[i]}"\n'
                f'http: "127.0.0.1:{mports[i]}"\nmax_payload: {max_payload}\n'
                f'jetstream {{\n  store_dir: "{d / "jetstream"}"\n}}\n'
                f'cluster {{\n  name: "{name}"\n  listen: "127.0.0.1:{cports[i]}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
            proc = spawn_nats(conf, d)
            nodes.append(
                ServerProcess(f"nats-{i}", ports[i], f"nats://127.0.0.1:{ports[i]}", proc, d)
            )
            wait_listening(nodes[-1])
        cluster = NatsCluster(nodes, mports)
        cluster.wait_routes()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return cluster
