"""Adapter paging, versions: replace and delete events from the adapter store; running
requests finish on the old weights, later requests get the new ones (also while the engine
is busy), and a fetch in flight across a replace is not kept.
"""

from __future__ import annotations

import asyncio

from tests.adapters.paging_helpers import PROMPTS, TIMEOUT, Harness, Reference, held, idle, until


# ---- replace and delete events -----------------------------------------------------------
async def test_replace_and_delete_events(h: Harness, ref: Reference) -> None:
    v1 = await h.register("a")
    name = h.name("a")
    gw = h.gateway
    async with h.worker() as w:
        rid = await gw.submit(w, PROMPTS[0], name)
        old_tokens = await gw.tokens(rid)
        assert old_tokens == ref("a", PROMPTS[0])
        old_key = f"{name}@{v1}"

        # A long request holds the old copy while the adapter is replaced upstream.  The gate
        # holds the engine between two of its steps (the long request still has most of its
        # tokens to go) until the event has been applied and the next request is lined up.
        seen: dict[str, object] = {}
        unpin, retire = w.pager.unpin, w.pager.retire

        def watching_unpin(key: str) -> None:
            if key == new_key:
                seen.update(
                    long_running=w.engine.scheduler.find(long_rid) is not None,
                    old_in_engine=old_key in w.engine.adapters,
                    current=w.pager.current.get(name),
                )
            unpin(key)

        def retire_then_hold(key: str) -> None:  # the engine-loop half of applying the event
            retire(key)
            if key == old_key:
                w.gate.shut()

        w.pager.unpin = watching_unpin  # type: ignore[method-assign]
        w.pager.retire = retire_then_hold  # type: ignore[method-assign]
        long_rid = await gw.submit(w, PROMPTS[1], name, max_tokens=40)
        await gw.first_delta(long_rid)
        await w.gate.close()
        v2 = await h.register("a2", as_key="a", replace=True)
        assert v2 > v1
        new_key = f"{name}@{v2}"
        await until(lambda: len(w.inbox) == 1, what="the replace event queued")
        w.gate.open()  # one more step, then the event is applied and the gate shuts again
        await w.gate.wait_parked()
        assert name not in w.pager.current
        assert old_key in w.engine.adapters and w.engine.scheduler.find(long_rid) is not None
        rid = await gw.submit(w, PROMPTS[0], name)
        await until(lambda: len(w.inbox) == 1, what="the new request's install-and-add queued")
        w.gate.open()

        new_tokens = await gw.tokens(rid)
        assert new_tokens == ref("a2", PROMPTS[0]) and new_tokens != old_tokens
        assert seen == {"long_running": True, "old_in_engine": True, "current": new_key}
        assert w.pager.loads == 2

        # The running request finished on the old weights; then the stale copy was dropped.
        assert await gw.tokens(long_rid) == ref("a", PROMPTS[1], 40)
        assert gw.first_ts(rid) < gw.finish_ts(long_rid)
        w.pager.unpin, w.pager.retire = unpin, retire  # type: ignore[method-assign]
        await idle(w)
        assert old_key not in w.engine.adapters and old_key not in w.pager.cache
        assert f"{name}@{v2}" in w.engine.adapters

        # Deleted upstream: the worker drops it and the next request is a 404.
        await h.delete("a")
        await until(lambda: name not in w.pager.current, what="delete event applied")
        rid = await gw.submit(w, PROMPTS[0], name)
        await gw.wait(rid)
        assert rid in gw.errors and gw.errors[rid].code == 404
        assert not gw.deltas[rid]
        await idle(w)
        assert not any(k.startswith(f"{name}@") for k in w.engine.adapters)
        assert w.pager.names() == []


# ---- races between paging and replacement (each was a bug once) --------------------------
async def test_request_after_replace_event_gets_new_weights_while_engine_busy(
    h: Harness, ref: Reference
) -> None:
    await h.register("a")
    name = h.name("a")
    gw = h.gateway
    async with h.worker() as w:
        assert await gw.tokens(await gw.submit(w, PROMPTS[0], name)) == ref("a", PROMPTS[0])
        busy = await gw.submit(w, PROMPTS[2], None, max_tokens=2000)  # keeps the engine stepping
        await gw.first_delta(busy)
        await w.gate.close()
        await h.register("a2", as_key="a", replace=True)
        await until(lambda: len(w.inbox) == 1, what="the replace event queued")
        rid = await gw.submit(w, PROMPTS[0], name)  # sent after the worker got the event
        await until(lambda: len(w.inbox) == 2, what="the request's install-and-add queued")
        w.gate.open()
        await gw.wait(rid)
        await gw.cancel(w, busy)
        assert rid not in gw.errors, gw.errors.get(rid)
        assert gw.token_ids(rid) == ref("a2", PROMPTS[0]), "served by the replaced adapter"


async def test_fetch_in_flight_across_replace_is_not_kept(h: Harness, ref: Reference) -> None:
    await h.register("a")
    name = h.name("a")
    gw = h.gateway
    fetched, release = asyncio.Event(), asyncio.Event()
    async with h.worker(wrap_fetch=held(fetched, release)) as w:
        applied = asyncio.Event()
        invalidate = w.pager.invalidate

        def spy(adapter: str) -> str | None:
            old = invalidate(adapter)
            applied.set()
            return old

        w.pager.invalidate = spy  # type: ignore[method-assign]
        first = await gw.submit(w, PROMPTS[0], name)
        await asyncio.wait_for(fetched.wait(), TIMEOUT)  # it has read version 1
        await h.register("a2", as_key="a", replace=True)
        await asyncio.wait_for(applied.wait(), TIMEOUT)
        release.set()
        await gw.tokens(first)  # sent before the replace: either version is fine
        later = await gw.submit(w, PROMPTS[0], name)
        assert await gw.tokens(later) == ref("a2", PROMPTS[0]), "stale copy kept after replace"
