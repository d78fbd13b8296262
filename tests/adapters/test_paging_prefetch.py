"""Adapter paging, prefetch and heartbeats: ``PrefetchAdapter`` pages an adapter in without a
request, and worker heartbeats report the resident adapters.
"""

from __future__ import annotations

from loraplex.protocol import PrefetchAdapter, Subjects, WorkerHeartbeat
from tests.adapters.paging_helpers import PROMPTS, Harness, Reference, flush_subscriptions, until


# ---- heartbeats and prefetch -------------------------------------------------------------
async def test_heartbeat_reports_resident_adapters_and_prefetch(h: Harness, ref: Reference) -> None:
    version = await h.register("c")
    name = h.name("c")
    gw = h.gateway
    beats: list[WorkerHeartbeat] = []

    async with h.worker(heartbeat_interval_s=0.05) as w:

        async def on_beat(hb: WorkerHeartbeat) -> None:
            if hb.worker_id == w.id:
                beats.append(hb)

        await gw.bus.subscribe(Subjects.HEARTBEAT, on_beat, WorkerHeartbeat)
        await flush_subscriptions(gw.bus)
        await until(lambda: bool(beats), what="a heartbeat")
        assert beats[-1].adapters == []

        # Prefetch pages the adapter in without a request: resident in host memory and known
        # to the engine, in no device slot yet; the heartbeat reports it.
        await gw.bus.publish(Subjects.worker(w.id), PrefetchAdapter(name))
        await until(lambda: name in beats[-1].adapters, what="prefetched adapter in a heartbeat")
        key = f"{name}@{version}"
        assert w.pager.loads == 1 and key in w.engine.adapters and key in w.pager.cache
        assert w.engine.slots.resident() == [] and not w.engine.has_unfinished()

        # A prefetch of something the store lacks changes nothing.
        await gw.bus.publish(Subjects.worker(w.id), PrefetchAdapter(h.name("nope")))
        n = len(beats)
        await until(lambda: len(beats) >= n + 3, what="more heartbeats")
        assert beats[-1].adapters == [name]

        # The request finds it resident: no further fetch.
        rid = await gw.submit(w, PROMPTS[0], name)
        assert await gw.tokens(rid) == ref("c", PROMPTS[0])
        assert w.pager.loads == 1

        # A second prefetch of a resident adapter is a no-op.
        await gw.bus.publish(Subjects.worker(w.id), PrefetchAdapter(name))
        n = len(beats)
        await until(lambda: len(beats) >= n + 3, what="more heartbeats")
        assert w.pager.loads == 1

        # Deleted upstream: no longer reported.
        await h.delete("c")
        await until(
            lambda: name not in beats[-1].adapters, what="deleted adapter gone from heartbeats"
        )
