"""The bus on a real 3-node NATS cluster: a service told every node's URL keeps serving when the
node it is connected to dies (SIGKILL), starts while one node is down, and a JetStream stream
with 3 replicas keeps every message through a node's death."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import pytest

from loraplex.bus import Bus, BusError, parse_nats_urls
from loraplex.tooling.nats_cluster import NatsCluster

T = TypeVar("T")


def test_a_cluster_url_is_its_list_of_servers() -> None:
    assert parse_nats_urls("nats://a:1, nats://b:2,,") == ["nats://a:1", "nats://b:2"]
    assert parse_nats_urls(["nats://a:1"]) == ["nats://a:1"]
    with pytest.raises(ValueError, match="no NATS server"):
        parse_nats_urls(" , ")


def node_of(bus: Bus, cluster: NatsCluster) -> int:
    return [n.port for n in cluster.nodes].index(bus.nc.connected_url.port)


async def test_requests_flow_on_when_the_servers_node_dies(nats_cluster: NatsCluster) -> None:
    server = await Bus.connect(nats_cluster.url, "echo-server")
    client = await Bus.connect(nats_cluster.url, "echo-client")

    async def echo(raw) -> None:  # type: ignore[no-untyped-def]
        await raw.respond(raw.data)

    try:
        await server.subscribe_raw("echo", echo)
        await server.flush()
        victim = node_of(server, nats_cluster)
        nats_cluster.kill(victim)
        ok_after, failed = 0, 0
        deadline = time.monotonic() + 30  # bound: the test fails rather than hangs
        while ok_after < 50 and time.monotonic() < deadline:
            try:
                assert await client.request_raw("echo", b"x", timeout=1.0) == b"x"
                ok_after += 1
            except BusError:
                failed += 1  # the gap while the server moves to another node
        assert ok_after == 50, f"{failed} requests failed and none got through since"
        assert node_of(server, nats_cluster) != victim
    finally:
        await server.close()
        await client.close()


async def test_connects_while_a_listed_node_is_down(nats_cluster: NatsCluster) -> None:
    nats_cluster.kill(0)
    bus = await Bus.connect(nats_cluster.url, "late-starter", connect_timeout=2.0)
    try:
        assert bus.is_connected and node_of(bus, nats_cluster) != 0
    finally:
        await bus.close()


async def retried(call: Callable[[], Awaitable[T]], within_s: float = 30.0) -> T:
    deadline = time.monotonic() + within_s  # bound: the test fails rather than hangs
    while True:
        try:
            return await call()
        except (nats.errors.Error, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_replicated_stream_keeps_its_messages_through_a_node_death(
    nats_cluster: NatsCluster,
) -> None:
    await asyncio.to_thread(nats_cluster.wait_jetstream)
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=2.0)
        await js.add_stream(name="events", subjects=["events.>"], num_replicas=3)
        for i in range(20):
            await js.publish("events.x", str(i).encode())
        leader = (await js.stream_info("events")).cluster.leader
        nats_cluster.kill(int(leader.rsplit("-", 1)[1]))  # server names end in -<index>
        # until the survivors elect new stream and meta leaders, calls time out: retried
        for i in range(20, 40):
            await retried(lambda i=i: js.publish("events.x", str(i).encode()))
        sub = await retried(lambda: js.pull_subscribe("events.x", "reader"))
        got: list[bytes] = []
        while len(got) < 40:
            n = 40 - len(got)
            got += [m.data for m in await retried(lambda n=n: sub.fetch(n, timeout=2))]
        assert got == [str(i).encode() for i in range(40)]
    finally:
        await nc.close()
