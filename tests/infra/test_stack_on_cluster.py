"""A live stack (`loraplex up` machinery: adapter store, two scheduler replicas, a prefill and a
decode worker, gateway) on a 3-node NATS cluster and a Sentinel-watched Redis, every service given
every NATS URL and the redis+sentinel:// URL.  While steady load flows, one NATS node is
SIGKILLed, then the Redis primary: requests go on, no adapter and no fairness counter is lost.
Each test prints what it measured (`pytest -s`); docs/deploy.md quotes it."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import httpx
import pytest
import redis

from loraplex.scheduler.counters import COUNTERS_SUFFIX
from loraplex.tooling.nats_cluster import NatsCluster, start_nats_cluster
from loraplex.tooling.redis_sentinel import SentinelSet, start_redis_sentinel
from tests.infra.load import Load
from tests.stack.conftest import launch

RETRY_S = "15"  # LORAPLEX_REDIS_RETRY_S: above a Sentinel failover on a loaded CI box
MEASURED: dict[str, list[str]] = {}  # one test's outcomes another test judges


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cluster = start_nats_cluster(tmp_path_factory.mktemp("nats-cluster"))
    try:
        sentinels = start_redis_sentinel(tmp_path_factory.mktemp("sentinel"))
    except BaseException:
        cluster.stop()
        raise
    yield cluster, sentinels
    sentinels.stop()
    cluster.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, servers):
    cluster, sentinels = servers
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAPLEX_REDIS_RETRY_S", RETRY_S)  # the services inherit it
        flags = ["--prefill-workers", "1", "--decode-workers", "1", "--schedulers", "2"]
        flags += ["--nats-url", cluster.url, "--redis-url", sentinels.url]
        stack = launch(tmp_path_factory, "on-cluster", flags)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def model(stack) -> str:
    return stack.adapters[0].name


def clients_per_node(cluster: NatsCluster) -> list[list[str]]:
    """The names of the loraplex connections on each live node (from its /connz)."""
    names: list[list[str]] = []
    for port, node in zip(cluster.monitor_ports, cluster.nodes, strict=True):
        if node.proc.poll() is not None:
            names.append([])
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?limit=1000", timeout=2) as r:
            conns = json.loads(r.read()).get("connections") or []
        names.append(sorted(c["name"] for c in conns if c.get("name")))
    return names


def saved_counters(sentinels: SentinelSet) -> dict[str, float]:
    with redis.Redis(port=sentinels.primary_port(), socket_timeout=2) as r:
        raw = r.get("loraplex" + COUNTERS_SUFFIX)
    return json.loads(raw)["counters"] if raw else {}


def upload(base: str, name: str, path) -> httpx.Response:  # type: ignore[no-untyped-def]
    files = [
        ("files", (f, (path / f).read_bytes(), "application/octet-stream"))
        for f in ("adapter_config.json", "adapter_model.safetensors")
    ]
    return httpx.post(base + "/v1/adapters", data={"name": name}, files=files, timeout=60)


def test_requests_flow_on_when_a_nats_node_dies(stack, servers, model) -> None:
    cluster, _ = servers
    before = clients_per_node(cluster)
    everyone = sorted(sum(before, []))
    assert len(everyone) >= 6, before  # gateway, 2 schedulers, 2 workers, adapter store
    victim = max(range(len(before)), key=lambda i: len(before[i]))
    with Load(stack.urls["gateway"], model) as load:
        load.wait_completed(20, after=0)
        t0 = time.monotonic()
        baseline = load.longest_gap(t0 - 3)
        cluster.kill(victim)
        killed = time.monotonic()
        load.wait_completed(40, after=killed)
    failed = [o for o in load.failed() if o.end > killed - 1]
    gap = load.longest_gap(killed)
    print(f"\nNATS node kill ({len(before[victim])} of {len(everyone)} connections on it): "
          f"longest gap {gap:.2f}s (before: {baseline:.2f}s), {len(failed)} of "
          f"{len(load.outcomes)} requests failed: {[o.error for o in failed]}")  # fmt: skip
    # no request got an error; one that ended short of its tokens is the next test's question
    cut = [o.error for o in load.failed() if o.error.startswith(("short", "cut"))]
    MEASURED["nats kill cut requests"] = cut
    assert len(cut) == len(load.failed()), load.failed()
    after = clients_per_node(cluster)
    assert sorted(sum(after, [])) == everyone and not after[victim]  # all on the survivors now
    cluster.restart(victim)


def test_no_adapter_and_no_counter_lost_when_redis_fails_over(stack, servers, model) -> None:
    _, sentinels = servers
    base = stack.urls["gateway"]
    demo = stack.adapters
    assert upload(base, "before-failover", demo[1].path).status_code == 201
    with Load(base, model) as load:
        load.wait_completed(10, after=0)
        with redis.Redis(port=sentinels.primary_port(), socket_timeout=5) as r:
            r.set("test-marker", os.urandom(4).hex())
            assert r.wait(1, 5000) == 1  # the replica has it all (async replication's window)
        counters = saved_counters(sentinels)
        assert counters.get("default", 0) > 0, counters
        old = sentinels.kill_primary()
        killed = time.monotonic()
        during = upload(base, "during-failover", demo[2].path)  # retried onto the new primary
        assert sentinels.wait_failover(old) != old
        promoted = time.monotonic()
        load.wait_completed(20, after=promoted)
    failed = [o for o in load.failed() if o.end > killed - 1]
    print(f"\nRedis failover (promoted {promoted - killed:.2f}s after the kill): "
          f"longest gap {load.longest_gap(killed):.2f}s, {len(failed)} of "
          f"{len(load.outcomes)} requests failed: {[o.error for o in failed]}")  # fmt: skip
    assert during.status_code == 201, during.text
    # what failed, failed cleanly (a 503 naming the cause, never a 500, a hang or a cut stream);
    # whether anything may fail is the next test's question
    assert all("Error code: 503" in o.error for o in load.failed()), load.failed()
    MEASURED["redis failover failures"] = [o.error for o in failed]
    # every adapter is listed and served (the new ones paged in from the promoted replica)
    listed = {m["id"] for m in httpx.get(base + "/v1/models", timeout=30).json()["data"]}
    names = {a.name for a in demo} | {"before-failover", "during-failover"}
    assert names <= listed, listed
    for name in sorted(names):
        body = {"model": name, "prompt": "hi", "max_tokens": 4, "temperature": 0}
        r = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
    # the counters the scheduler charged before the failover were there after it, and grew
    after = saved_counters(sentinels)
    assert after.get("default", 0) > counters["default"], (counters, after)


# Was an open bug, fixed in leader.py (a fenced write re-takes a lease the promoted replica lost,
# when no one led since): with one scheduler a failover longer than --leader-lease gave 503s.
def test_no_request_fails_during_a_redis_failover() -> None:
    assert "redis failover failures" in MEASURED  # the failover test ran
    assert MEASURED["redis failover failures"] == []


# Was an open bug: core NATS is at-most-once, so a token message that crossed the killed node was
# lost and the request completed one token short (once in ~10 runs); the gateway now repairs it
# from the last delta's full_text and count.
def test_no_request_is_cut_short_by_a_nats_node_kill() -> None:
    assert "nats kill cut requests" in MEASURED  # the NATS kill test ran
    assert MEASURED["nats kill cut requests"] == []
