"""Servers as several machines would run them, on loopback: a 3-node NATS cluster and a Redis
primary with a replica and three Sentinels.  A missing binary is an error, not a skip
(``scripts/install-system-deps.sh`` installs redis-sentinel)."""

from __future__ import annotations

import pytest

from loraplex.tooling.nats_cluster import NatsCluster, start_nats_cluster
from loraplex.tooling.redis_sentinel import SentinelSet, start_redis_sentinel


@pytest.fixture
def nats_cluster(tmp_path) -> NatsCluster:
    cluster = start_nats_cluster(tmp_path / "nats")
    yield cluster
    cluster.stop()


@pytest.fixture
def sentinel_set(tmp_path) -> SentinelSet:
    sentinels = start_redis_sentinel(tmp_path / "redis")
    yield sentinels
    sentinels.stop()
