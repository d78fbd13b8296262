"""Adapter paging while Redis is down (``--adapter-disk-cache``): a worker restarted during a Redis
outage serves the adapters it had paged in from its disk copies, with the same tokens; a copy
nobody confirmed within the trust window does not serve (a 503, as without copies); once Redis is
back, an adapter replaced while the worker was away is paged in again.

Each test runs its own redis-server, so it can stop and start it (on the same port and data)
without touching the session's."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplex.tooling.servers import ServerProcess, start_redis
from loraplex.worker.runtime import Worker
from tests.adapters.paging_helpers import PROMPTS, Harness, Reference, held, idle


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ServerProcess]]:
    """[the running server]: the test replaces it when it restarts Redis."""
    monkeypatch.setenv("LORAPLEX_REDIS_RETRY_S", "0.5")  # a down Redis fails fast
    servers = [start_redis(tmp_path / "redis")]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def redis_url(own_redis: list[ServerProcess]) -> str:  # the harness ``h`` uses this one
    return own_redis[0].url


@pytest.fixture
def redis_ctl(h: Harness, own_redis: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """``own_redis`` for the test to stop and start; up again before the harness cleans up."""
    yield own_redis
    if own_redis[-1].proc.poll() is not None:
        restart(own_redis)


def restart(servers: list[ServerProcess]) -> None:
    """Start Redis again on its port, from its data (AOF)."""
    old = servers[-1]
    servers.append(start_redis(old.data_dir, port=old.port))


def page_ins(w: Worker, outcome: str) -> float:
    return w.metrics._page_ins.labels(w.id, "both", outcome)._value.get()


async def test_a_worker_restarted_while_redis_is_down_serves_its_disk_copies(
    h: Harness, ref: Reference, redis_ctl: list[ServerProcess], tmp_path: Path
) -> None:
    disk = str(tmp_path / "copies")
    version = await h.register("a")
    name, gw = h.name("a"), h.gateway
    async with h.worker(adapter_disk_cache=disk) as w:
        rid = await gw.submit(w, PROMPTS[0], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[0])
        assert page_ins(w, "ok") == 1
        await w.pager.copies_written()
        (copy,) = Path(disk).iterdir()
        assert copy.name.endswith(f".v{version}.lpa")
        # held as current while it hears the store's events: its copy stays trusted (what the
        # worker's loop does every DISK_COPIES_CHECK_S)
        os.utime(copy, (1000, 1000))
        await w.check_disk_copies()
        assert time.time() - copy.stat().st_mtime < 60

    redis_ctl[-1].stop()  # Redis goes down; the worker restarts with an empty memory
    async with h.worker(adapter_disk_cache=disk) as w:
        rid = await gw.submit(w, PROMPTS[1], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[1])  # the same adapter, token for token
        assert w.pager.current[name] == f"{name}@{version}"
        assert (page_ins(w, "disk"), page_ins(w, "ok")) == (1, 0)
        # served from the copy, confirmed by nobody: it keeps ageing
        os.utime(copy, (time.time() - 100,) * 2)
        await w.pager.confirm_disk_copies()
        assert time.time() - copy.stat().st_mtime >= 100
        # an adapter it never held has no copy: a 503, as before
        rid = await gw.submit(w, PROMPTS[0], h.name("b"))
        await gw.wait(rid)
        assert gw.errors[rid].code == 503
        # Redis back: the recheck finds the same version, and this process confirms it from now on
        restart(redis_ctl)
        assert await w.pager.recheck_disk_served() == []
        assert w.pager.current[name] == f"{name}@{version}"
        os.utime(copy, (1000, 1000))
        await w.check_disk_copies()
        assert time.time() - copy.stat().st_mtime < 60
    redis_ctl[-1].stop()

    # A copy confirmed longer ago than the trust window does not stand in for Redis.
    async with h.worker(adapter_disk_cache=disk, adapter_disk_trust_s=0.0) as w:
        rid = await gw.submit(w, PROMPTS[1], name)
        await gw.wait(rid)
        assert gw.errors[rid].code == 503 and "Redis is unavailable" in gw.errors[rid].message
        assert page_ins(w, "disk") == 0


async def test_an_adapter_replaced_while_its_worker_was_away_is_paged_in_again(
    h: Harness, ref: Reference, redis_ctl: list[ServerProcess], tmp_path: Path
) -> None:
    disk = str(tmp_path / "copies")
    first = await h.register("a")
    name, gw = h.name("a"), h.gateway
    async with h.worker(adapter_disk_cache=disk) as w:
        rid = await gw.submit(w, PROMPTS[0], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[0])
        await w.pager.copies_written()
    # While the worker is away: the adapter is replaced (it misses the event), then Redis dies.
    second = await h.register("a2", as_key="a", replace=True)
    assert second > first
    redis_ctl[-1].stop()
    async with h.worker(adapter_disk_cache=disk) as w:
        # Within the trust window the copy it held serves (nothing newer can be read) ...
        rid = await gw.submit(w, PROMPTS[1], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[1])
        assert await w.pager.recheck_disk_served() == []  # Redis still down: nothing learnt
        restart(redis_ctl)
        # ... and once Redis answers again, the recheck finds the newer version.
        retired = await w.pager.recheck_disk_served()
        assert retired == [f"{name}@{first}"] and name not in w.pager.current
        for old in retired:
            w.inbox.submit(lambda old=old: w.pager.retire(old))
        await idle(w)
        rid = await gw.submit(w, PROMPTS[1], name)
        assert await gw.tokens(rid) == ref("a2", PROMPTS[1])
        assert w.pager.current[name] == f"{name}@{second}"
        await w.pager.copies_written()
        # the replaced version's copy is gone, the new one kept
        assert [p.name.endswith(f".v{second}.lpa") for p in Path(disk).iterdir()] == [True]


async def test_a_version_retired_during_its_fetch_leaves_no_copy(
    h: Harness, ref: Reference, tmp_path: Path
) -> None:
    """An event (replaced, deleted) that arrives while a fetch is in flight: the fetched bytes may
    be the retired version's, so they serve the request that asked but are not kept on disk."""
    disk = tmp_path / "copies"
    await h.register("a")
    name, gw = h.name("a"), h.gateway
    fetched, release = asyncio.Event(), asyncio.Event()
    async with h.worker(adapter_disk_cache=str(disk), wrap_fetch=held(fetched, release)) as w:
        rid = await gw.submit(w, PROMPTS[0], name)
        await fetched.wait()
        w.pager.invalidate(name)  # what the worker does on the store's change event
        release.set()
        assert await gw.tokens(rid) == ref("a", PROMPTS[0])
        await w.pager.copies_written()
        assert list(disk.iterdir()) == []
        # the next page-in (of the current generation) keeps its copy
        await idle(w)
        rid = await gw.submit(w, PROMPTS[1], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[1])
        await w.pager.copies_written()
        assert len(list(disk.iterdir())) == 1


async def test_a_directory_it_cannot_write_costs_the_copies_not_the_worker(
    h: Harness, ref: Reference, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    await h.register("a")
    async with h.worker(adapter_disk_cache=str(blocked / "copies")) as w:
        assert w.pager.disk is None
        rid = await h.gateway.submit(w, PROMPTS[0], h.name("a"))
        assert await h.gateway.tokens(rid) == ref("a", PROMPTS[0])
