"""Adapter paging, fetch path: the first request pages an adapter in from Redis (then it is
served from the host tier; a missing adapter is a 404), and the running batch keeps decoding
and new requests keep being admitted while another adapter's fetch is in flight.
"""

from __future__ import annotations

import asyncio
import time

from tests.adapters.paging_helpers import PROMPTS, TIMEOUT, Harness, Reference, held, idle, until


# ---- the first request pages the adapter in ----------------------------------------------
async def test_first_request_pages_adapter_from_redis(h: Harness, ref: Reference) -> None:
    version = await h.register("a")
    name = h.name("a")
    gw = h.gateway
    async with h.worker() as w:
        assert w.pager.names() == [] and w.engine.adapters == {}

        rid = await gw.submit(w, PROMPTS[0], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[0])
        key = f"{name}@{version}"
        assert w.pager.loads == 1
        assert w.pager.names() == [name] and w.pager.current[name] == key
        assert key in w.engine.adapters and w.engine.slots.slot_of(key) is not None

        # Resident now: the next request is served from the host tier without a fetch.
        rid = await gw.submit(w, PROMPTS[1], name)
        assert await gw.tokens(rid) == ref("a", PROMPTS[1])
        assert w.pager.loads == 1

        # The base model is unaffected; an adapter the store does not have is a 404.
        rid = await gw.submit(w, PROMPTS[0], None)
        assert await gw.tokens(rid) == ref(None, PROMPTS[0])
        rid = await gw.submit(w, PROMPTS[0], h.name("nope"))
        await gw.wait(rid)
        assert gw.errors[rid].code == 404
        await idle(w)
        assert w.pager.loads == 1 and w.pager.names() == [name]


# ---- the running batch keeps decoding while another adapter pages in ---------------------
async def test_running_request_keeps_decoding_while_adapter_pages_in(
    h: Harness, ref: Reference
) -> None:
    await h.register("b")
    name = h.name("b")
    gw = h.gateway
    window: dict[str, float] = {}
    delay = 1.0

    def slow(fetch):  # a real Redis fetch, delayed
        async def fetch_slowly(adapter: str) -> tuple[bytes, bytes, str]:
            window["start"] = time.monotonic()
            await asyncio.sleep(delay)
            got = await fetch(adapter)
            window["end"] = time.monotonic()
            return got

        return fetch_slowly

    async with h.worker(wrap_fetch=slow) as w:
        long_prompt = PROMPTS[2]
        long_rid = await gw.submit(w, long_prompt, None, max_tokens=2000)  # cancelled below
        await gw.first_delta(long_rid)

        rid = await gw.submit(w, PROMPTS[0], name)
        await until(lambda: "start" in window, what="fetch start")
        # While the fetch runs the new request is not in the engine (the worker knows it, so a
        # cancel would find it, but holds no adapter for it); the adapter is not installed either.
        while "end" not in window:
            assert w.engine.scheduler.find(rid) is None
            assert rid not in w.active or w.active[rid].adapter_key is None
            assert not any(k.startswith(f"{name}@") for k in w.engine.adapters)
            await asyncio.sleep(0.02)

        assert await gw.tokens(rid) == ref("b", PROMPTS[0])
        start, end = window["start"], window["end"]
        assert end - start >= delay
        # Admitted only once its adapter was resident: its first token follows the fetch.
        assert gw.first_ts(rid) > end

        in_window = [ts for ts, _ in gw.deltas[long_rid] if start < ts < end]
        assert not gw.done[long_rid].is_set() or gw.finish_ts(long_rid) > end, (
            "long request ended too soon"
        )
        assert len(in_window) >= 5, (
            f"only {len(in_window)} tokens of the running request during the fetch"
        )
        mid = (start + end) / 2
        assert any(ts < mid for ts in in_window) and any(ts > mid for ts in in_window)

        await gw.cancel(w, long_rid)
        await idle(w)
        produced = gw.token_ids(long_rid)
        assert len(produced) < 2000
        n = min(len(produced), 48)
        assert produced[:n] == ref(None, long_prompt, n)
        assert w.pager.loads == 1


# ---- race: admission while another adapter pages in (it was a bug once) ------------------
async def test_requests_are_admitted_while_another_adapter_pages_in(
    h: Harness, ref: Reference
) -> None:
    await h.register("b")
    gw = h.gateway
    fetched, release = asyncio.Event(), asyncio.Event()
    async with h.worker(wrap_fetch=held(fetched, release)) as w:
        paging = await gw.submit(w, PROMPTS[0], h.name("b"))
        await asyncio.wait_for(fetched.wait(), TIMEOUT)
        base = await gw.submit(w, PROMPTS[1], None)
        try:
            done = await asyncio.wait_for(gw.done[base].wait(), 2.0)
        except asyncio.TimeoutError:
            done = False
        release.set()
        assert await gw.tokens(paging) == ref("b", PROMPTS[0])
        assert done, "the base request waited for another request's adapter fetch"
        assert await gw.tokens(base) == ref(None, PROMPTS[1])
