"""Adapter names keep serving while the adapter store's Redis is down (``known_adapters.py``):
the gateway answers from what the same tenant was last told, never another tenant's answer, and
a name it never resolved still gets the store's 503.  The memory itself is tested with a fake
clock; the gateway against a private redis-server that the test SIGKILLs and starts again."""

from __future__ import annotations

import httpx

from loraplex.gateway.known_adapters import BREAKER_S, KnownAdapters
from loraplex.tooling.ports import free_port
from loraplex.tooling.servers import start_redis
from tests.gateway.conftest import ALICE, BOB, FakeScheduler, GatewayFactory, register_adapter


def test_the_memory_is_per_tenant_bounded_in_time_and_size() -> None:
    now = [0.0]
    known = KnownAdapters(stale_s=60.0, capacity=2, clock=lambda: now[0])
    known.remember("alice", "mine", "alice/mine")
    assert known.recall("alice", "mine") == "alice/mine"
    assert known.recall("bob", "mine") is None  # bob was never told: nothing for bob
    now[0] = 61.0
    assert known.recall("alice", "mine") is None  # too old
    known.remember("alice", "mine", "alice/mine")
    known.remember("alice", "b", "public/b")
    known.remember("alice", "c", "public/c")  # over capacity: the least recent goes
    assert known.recall("alice", "mine") is None and known.recall("alice", "c") == "public/c"
    known.forget("alice", "c")  # the store said it no longer serves
    assert known.recall("alice", "c") is None
    assert not known.store_down
    known.store_failed()
    assert known.store_down
    now[0] += BREAKER_S
    assert not known.store_down


async def test_a_resolved_adapter_serves_through_a_redis_outage(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, demo, tmp_path
) -> None:
    redis = start_redis(tmp_path / "redis")
    body = {"model": "shared", "prompt": "Hello", "max_tokens": 4}
    metrics_port = free_port()
    try:
        async with (
            gateway_factory(redis_url=redis.url, metrics_port=metrics_port) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            r = await register_adapter(http, demo.adapters[0].path, "shared", ALICE)
            assert r.status_code == 201, r.text
            assert (await http.post("/v1/completions", json=body, headers=ALICE)).status_code == 200
            redis.proc.kill()
            redis.proc.wait()
            # alice was told what "shared" is: served, once after the store's retries, then at once
            for _ in range(3):
                r = await http.post("/v1/completions", json=body, headers=ALICE)
                assert r.status_code == 200, r.text
            assert scheduler.submits[-1].adapter == scheduler.submits[0].adapter
            seen = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert "loraplex_gateway_adapter_names_from_memory_total 3.0" in seen
            # bob never resolved it (it is alice's): the store's answer, a 503, as before
            r = await http.post("/v1/completions", json=body, headers=BOB)
            assert r.status_code == 503 and "Redis is unavailable" in r.json()["error"]["message"]
            redis.proc = start_redis(redis.data_dir, redis.port).proc  # back, from its AOF
            r = await http.post("/v1/completions", json=body, headers=BOB)
            assert r.status_code == 404, r.text  # alice's adapter: not bob's to use
    finally:
        redis.stop()


async def test_a_gateway_started_during_the_outage_asks_the_others(
    gateway_factory: GatewayFactory, scheduler: FakeScheduler, demo, tmp_path
) -> None:
    """A replica that starts while Redis is down knows no name: another gateway's memory
    answers for the same tenant only (``loraplex.gateway.adapter_names``)."""
    redis = start_redis(tmp_path / "redis")
    body = {"model": "shared", "prompt": "Hello", "max_tokens": 4}
    prefix = f"peers-{free_port()}"
    try:
        async with (
            gateway_factory(redis_url=redis.url, redis_prefix=prefix) as first,
            httpx.AsyncClient(base_url=first, timeout=30) as http,
        ):
            r = await register_adapter(http, demo.adapters[0].path, "shared", ALICE)
            assert r.status_code == 201, r.text
            assert (await http.post("/v1/completions", json=body, headers=ALICE)).status_code == 200
            served = scheduler.submits[-1].adapter
            redis.proc.kill()
            redis.proc.wait()
            async with (
                gateway_factory(redis_url=redis.url, redis_prefix=prefix) as second,
                httpx.AsyncClient(base_url=second, timeout=30) as late,
            ):
                r = await late.post("/v1/completions", json=body, headers=ALICE)
                assert r.status_code == 200, r.text
                assert scheduler.submits[-1].adapter == served
                r = await late.post("/v1/completions", json=body, headers=BOB)
                assert r.status_code == 503  # nobody resolved it for bob
    finally:
        redis.stop()
