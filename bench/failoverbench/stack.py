"""The stack the failover and chaos benches kill parts of: ``loraplex up --schedulers 2`` with one
prefill and two decode workers (the demo model on CPU) on a 3-node NATS cluster and one Redis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loraplex.tooling.launcher import Stack
from loraplex.tooling.nats_cluster import NatsCluster, start_nats_cluster
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import ServerProcess, start_redis
from loraplex.tooling.up_flags import parse_up_args


def replicated_stack(
    tmp: Path, keys: dict[str, str], max_num_seqs: int
) -> tuple[NatsCluster, ServerProcess, Stack, argparse.Namespace]:
    """The NATS cluster and Redis, started; the stack and its ``loraplex up`` arguments, for
    ``start_stack`` (tenants named by ``keys``' keys, each with that API key, weight 1)."""
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
        "--num-kv-blocks", "512", "--dtype", "float32", "--device", "cpu",
    ])  # fmt: skip
    return cluster, rds, stack, args
