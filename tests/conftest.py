"""Shared fixtures: real nats-server and redis-server processes on free loopback ports, and a
spy on the engine scheduler's preemptions.

A missing binary is an error, not a skip: `make test` installs both.
"""

from __future__ import annotations

import pytest

from loraplex.engine.scheduler import Scheduler
from loraplex.tooling.servers import ServerProcess, start_nats, start_redis


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> ServerProcess:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> ServerProcess:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: ServerProcess) -> str:
    return nats_server.url


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> str:
    return redis_server.url


@pytest.fixture
def preemptions(monkeypatch):
    """Record every Scheduler._preempt call (request id) on any engine during the test."""
    calls: list[str] = []
    original = Scheduler._preempt

    def spy(self, seq):
        calls.append(seq.request_id)
        return original(self, seq)

    monkeypatch.setattr(Scheduler, "_preempt", spy)
    return calls
