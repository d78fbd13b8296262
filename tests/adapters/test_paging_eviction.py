"""Adapter paging, eviction: device slots and the host-memory budget evict LRU adapters,
reload them (from host memory or Redis), never evict a pinned one, and an adapter evicted
between a request's prepare and install is paged in again.
"""

from __future__ import annotations

from tests.adapters.paging_helpers import PROMPTS, Harness, Reference, idle, until


# ---- device slots and host budget: eviction, reload, pins --------------------------------
async def test_slot_and_host_eviction_reload_and_pins(h: Harness, ref: Reference) -> None:
    keys = ("a", "b", "c", "big")
    versions = {k: await h.register(k) for k in keys}
    ekey = {k: f"{h.name(k)}@{versions[k]}" for k in keys}
    gw = h.gateway
    async with h.worker(max_loras=2, host_cache_mb=1) as w:
        device_loads: list[str] = []
        load = w.engine.lora_weights.load

        def counting_load(slot, adapter):  # type: ignore[no-untyped-def]
            device_loads.append(adapter.name)
            load(slot, adapter)

        w.engine.lora_weights.load = counting_load  # type: ignore[method-assign]

        async def run(key: str, prompt: list[int]) -> None:
            rid = await gw.submit(w, prompt, h.name(key))
            assert await gw.tokens(rid) == ref(key, prompt), key

        # Three adapters through two device slots: the LRU slot is reused, nothing refetched.
        for i, key in enumerate(("a", "b", "c")):
            await run(key, PROMPTS[i])
        await idle(w)
        assert w.pager.loads == 3 and device_loads == [ekey["a"], ekey["b"], ekey["c"]]
        assert set(w.engine.slots.resident()) == {ekey["b"], ekey["c"]}
        assert set(w.pager.cache.names()) == {ekey["a"], ekey["b"], ekey["c"]}  # 552 KiB < 1 MiB

        # "a" left its slot but not host memory: reloaded into a slot without a fetch.
        await run("a", PROMPTS[3])
        await idle(w)
        assert w.pager.loads == 3 and device_loads[-1] == ekey["a"]
        assert set(w.engine.slots.resident()) == {ekey["a"], ekey["c"]}

        # "big" alone exceeds the 1 MiB host budget: everything else leaves host memory (and
        # with it the engine and its device slot) to make room; "big" is kept while its request
        # needs it, and goes once unpinned (still over budget on its own).
        big_seen: list[list[str]] = []
        install = w.pager.install

        def watching_install(r):  # type: ignore[no-untyped-def]
            install(r)
            big_seen.append(list(w.engine.adapters))

        w.pager.install = watching_install  # type: ignore[method-assign]
        await run("big", PROMPTS[0])
        await idle(w)
        w.pager.install = install  # type: ignore[method-assign]
        assert w.pager.loads == 4
        assert big_seen == [[ekey["big"]]]
        assert w.pager.cache.names() == [] and w.engine.adapters == {} and w.pager.names() == []

        # Evicted from the host tier: the next request fetches from Redis again.
        await run("a", PROMPTS[1])
        await idle(w)
        assert w.pager.loads == 5
        assert w.pager.cache.names() == [ekey["a"]]

        # Pinned entries stay: "a" serves a running request while "big" pages in over budget.
        # The gate lines "big" up while "a" has most of its tokens to go; the state is read on
        # the engine loop when big's request lets go of its adapter.
        seen: dict[str, object] = {}
        unpin = w.pager.unpin

        def watching_unpin(key: str) -> None:
            if key == ekey["big"]:
                seen.update(
                    long_running=w.engine.scheduler.find(long_rid) is not None,
                    a_in_host=ekey["a"] in w.pager.cache,
                    a_in_engine=ekey["a"] in w.engine.adapters,
                    a_slot_pins=w.engine.slots.pinned(ekey["a"]),
                    host_used=w.pager.cache.used,
                )
            unpin(key)

        w.pager.unpin = watching_unpin  # type: ignore[method-assign]
        long_rid = await gw.submit(w, PROMPTS[2], h.name("a"), max_tokens=40)
        await gw.first_delta(long_rid)
        await w.gate.close()
        big_rid = await gw.submit(w, PROMPTS[3], h.name("big"))
        await until(lambda: len(w.inbox) == 1, what="big's install-and-add queued")
        w.gate.open()
        assert await gw.tokens(big_rid) == ref("big", PROMPTS[3])
        assert await gw.tokens(long_rid) == ref("a", PROMPTS[2], 40)
        w.pager.unpin = unpin  # type: ignore[method-assign]
        assert seen["long_running"], "the long request ended before big's did"
        assert seen["a_in_host"] and seen["a_in_engine"] and seen["a_slot_pins"] == 1
        assert seen["host_used"] > w.pager.cache.budget  # over budget rather than evict a pin
        await idle(w)
        # "big" was unpinned first and over budget, so it went; "a" fits and stays.
        assert w.pager.cache.names() == [ekey["a"]]
        assert w.pager.cache.used <= w.pager.cache.budget
        assert w.pager.loads == 6

        # Device pins: both slots held by running requests, a third adapter waits for a slot.
        loads_before = w.pager.loads
        rid_a = await gw.submit(w, PROMPTS[0], h.name("a"), max_tokens=24)
        rid_c = await gw.submit(w, PROMPTS[1], h.name("c"), max_tokens=24)
        await gw.first_delta(rid_a)
        await gw.first_delta(rid_c)
        await w.gate.close()
        rid_b = await gw.submit(w, PROMPTS[2], h.name("b"))
        await until(lambda: len(w.inbox) == 1, what="b's install-and-add queued")
        w.gate.open()
        assert await gw.tokens(rid_b) == ref("b", PROMPTS[2])
        assert await gw.tokens(rid_a) == ref("a", PROMPTS[0], 24)
        assert await gw.tokens(rid_c) == ref("c", PROMPTS[1], 24)
        assert gw.first_ts(rid_b) > min(gw.finish_ts(rid_a), gw.finish_ts(rid_c))
        await idle(w)
        assert w.pager.loads == loads_before + 2  # c and b were fetched again, a was resident
        assert all(w.engine.slots.pinned(k) == 0 for k in w.engine.slots.resident())
        assert all(w.pager.cache.pinned(k) == 0 for k in w.pager.cache.names())


# ---- race: eviction between prepare and install (it was a bug once) ----------------------
async def test_adapter_evicted_between_prepare_and_install(h: Harness, ref: Reference) -> None:
    await h.register("a")
    await h.register("big")
    gw = h.gateway
    async with h.worker(host_cache_mb=1) as w:
        assert await gw.tokens(await gw.submit(w, PROMPTS[0], h.name("a"))) == ref("a", PROMPTS[0])
        busy = await gw.submit(w, PROMPTS[2], None, max_tokens=2000)
        await gw.first_delta(busy)
        await w.gate.close()
        big = await gw.submit(w, PROMPTS[1], h.name("big"))  # will evict "a" (1 MiB budget)
        await until(lambda: len(w.inbox) == 1, what="big's install-and-add queued")
        again = await gw.submit(w, PROMPTS[3], h.name("a"))  # "a" is resident right now
        await until(lambda: len(w.inbox) == 2, what="a's install-and-add queued")
        w.gate.open()
        assert await gw.tokens(big) == ref("big", PROMPTS[1])
        await gw.wait(again)
        await gw.cancel(w, busy)
        assert again not in gw.errors, gw.errors.get(again)
        assert gw.token_ids(again) == ref("a", PROMPTS[3])
