"""The stack the failover and chaos benches kill parts of: ``loraplex up --schedulers 2`` with one
prefill and two decode workers (the demo model on CPU) on a 3-node NATS cluster and one Redis;
and reading a series off one of its services' status listeners."""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

from loraplex.tooling.launcher import Stack
from loraplex.tooling.nats_cluster import NatsCluster, start_nats_cluster
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import ServerProcess, start_redis
from loraplex.tooling.up_flags import parse_up_args


def replicated_stack(
    tmp: Path, keys: dict[str, str], max_num_seqs: int, extra: list[str] | None = None
) -> tuple[NatsCluster, ServerProcess, Stack, argparse.Namespace]:
    """The NATS cluster and Redis, started; the stack and its ``loraplex up`` arguments, for
    ``start_stack`` (tenants named by ``keys``' keys, each with that API key, weight 1;
    ``extra``: more ``loraplex up`` flags)."""
    cluster = start_nats_cluster(tmp / "nats", 3)
    rds = start_redis(tmp / "redis")
    stack = Stack(tmp / "run")
    tenants = tmp / "tenants.json"
    tenants.write_text(json.dumps({"tenants": [
        {"name": t, "api_key": k, "weight": 1.0} for t, k in keys.items()
    ]}))  # fmt: skip
    args = parse_up_args([
        "--port", str(free_port()), "--run-dir", str(stack.run_dir), "--nats-url", cluster.url,
        "--redis-url", rds.url, "--tenants", str(tenants), "--schedulers", "2",
        "--prefill-workers", "1", "--decode-workers", "2", "--max-num-seqs", str(max_num_seqs),
        "--num-kv-blocks", "512", "--dtype", "float32", "--device", "cpu", *(extra or []),
    ])  # fmt: skip
    return cluster, rds, stack, args


def metric(url: str, name: str) -> float | None:
    """The sum of ``name``'s series on ``url``/metrics (0 when absent); None when unreadable."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    lines = [x for x in text.splitlines() if x.startswith((name + " ", name + "{"))]
    return sum(float(x.split()[-1]) for x in lines)
