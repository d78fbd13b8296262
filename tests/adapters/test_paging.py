"""On-demand adapter paging into a worker: Redis -> host LRU -> device slots, with real
redis-server and nats-server and in-process ``Worker`` objects (role "both").

Requests go in as ``PrefillAssign`` on the worker's subject, exactly as the scheduler sends
them; tokens come back as ``TokenDelta``/``RequestError`` on a gateway stream subject that a
real subscriber collects.  Adapters are registered through the adapter store's own
``Registrar`` (which publishes the ``AdapterEvent``s workers react to).  Greedy outputs are
compared with the offline ``loraplex.LLM`` loaded with the same PEFT files.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loraplex import LLM, SamplingParams
from loraplex.adapter_store.events import EventPublisher
from loraplex.adapter_store.registrar import Registrar
from loraplex.adapter_store.uploads import AdapterUpload
from loraplex.adapters.store import AdapterStore
from loraplex.bus import Bus
from loraplex.demo import (
    ALL_MODULES,
    ATTN_MODULES,
    MLP_MODULES,
    DemoModelInfo,
    write_demo_model,
    write_random_adapter,
)
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE
from loraplex.model.config import ModelConfig
from loraplex.protocol import (
    CancelRequest,
    PrefetchAdapter,
    PrefillAssign,
    RequestError,
    SamplingSpec,
    Subjects,
    SubmitRequest,
    TokenDelta,
    WorkerHeartbeat,
)
from loraplex.tenants import Tenant
from loraplex.worker.main import make_engine, make_fetch
from loraplex.worker.runtime import Worker
from loraplex.worker.settings import WorkerSettings

TENANT = Tenant("paging-tests", api_key="")
TIMEOUT = 60.0  # generous: the test machine may be busy

# local adapter id -> (rank, targets, seed).  Parsed (fp32) sizes on the demo model:
# a 256 KiB, b 224 KiB, c 72 KiB, big 1.25 MiB (alone larger than a 1 MiB host budget).
ADAPTERS = {
    "a": (8, ALL_MODULES, 11),
    "a2": (8, ALL_MODULES, 12),  # replacement weights for "a"
    "b": (16, ATTN_MODULES, 13),
    "c": (4, MLP_MODULES, 14),
    "big": (40, ALL_MODULES, 15),
}
PROMPTS = ([5, 6, 7, 8, 9, 10], [100, 200, 300], [42] * 7, [7, 8, 9])


# ---- module fixtures: model, adapters, offline reference ---------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoModelInfo:
    return write_demo_model(tmp_path_factory.mktemp("paging-model"), num_adapters=0)


@pytest.fixture(scope="module")
def adapter_dirs(demo: DemoModelInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paging-adapters")
    for key, (rank, targets, seed) in ADAPTERS.items():
        write_random_adapter(
            root / key, demo.spec, rank=rank, alpha=2.0 * rank, targets=targets, seed=seed
        )
    return {key: root / key for key in ADAPTERS}


class Reference:
    """Greedy outputs of the offline LLM (memoized)."""

    def __init__(self, demo: DemoModelInfo, adapter_dirs: dict[str, Path]) -> None:
        self.llm = LLM(
            demo.model_dir,
            dtype="float32",
            device="cpu",
            max_loras=len(adapter_dirs),
            max_lora_rank=64,
            block_size=4,
        )
        for key, path in adapter_dirs.items():
            self.llm.add_lora(key, path)
        self._memo: dict[tuple[str | None, tuple[int, ...], int], list[int]] = {}

    def __call__(self, adapter: str | None, prompt: list[int], max_tokens: int = 8) -> list[int]:
        k = (adapter, tuple(prompt), max_tokens)
        if k not in self._memo:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            self._memo[k] = self.llm.generate(prompt, params, lora=adapter)[0].token_ids
        return self._memo[k]


@pytest.fixture(scope="module")
def ref(demo: DemoModelInfo, adapter_dirs: dict[str, Path]) -> Reference:
    return Reference(demo, adapter_dirs)


# ---- per-test harness: store + registrar, a fake gateway, workers -------------------------
@dataclass
class Gateway:
    """Submits requests to a worker and collects its stream, timestamped on arrival."""

    bus: Bus
    id: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:8]}")
    deltas: dict[str, list[tuple[float, TokenDelta]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    errors: dict[str, RequestError] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    async def start(self) -> None:
        await self.bus.subscribe(Subjects.stream(self.id), self._on_msg, (TokenDelta, RequestError))
        await flush_subscriptions(self.bus)

    async def _on_msg(self, msg: TokenDelta | RequestError) -> None:
        if isinstance(msg, RequestError):
            self.errors[msg.request_id] = msg
            self.done[msg.request_id].set()
            return
        self.deltas[msg.request_id].append((time.monotonic(), msg))
        if msg.finish_reason is not None:
            self.done[msg.request_id].set()

    async def submit(
        self, worker: Worker, prompt: list[int], adapter: str | None, max_tokens: int = 8
    ) -> str:
        rid = f"r-{uuid.uuid4().hex[:10]}"
        self.done[rid]  # noqa: B018  (create the event before any reply can arrive)
        sampling = SamplingSpec(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        sub = SubmitRequest(
            rid, TENANT.name, self.id, list(prompt), sampling, adapter, arrival_ts=time.time()
        )
        await self.bus.publish(Subjects.worker(worker.id), PrefillAssign(sub))
        await self.bus.flush()
        return rid

    async def cancel(self, worker: Worker, rid: str) -> None:
        await self.bus.publish(Subjects.worker(worker.id), CancelRequest(rid))
        await self.bus.flush()

    async def wait(self, rid: str) -> None:
        await asyncio.wait_for(self.done[rid].wait(), TIMEOUT)

    async def tokens(self, rid: str) -> list[int]:
        await self.wait(rid)
        assert rid not in self.errors, self.errors[rid]
        return self.token_ids(rid)

    def token_ids(self, rid: str) -> list[int]:
        return [t for _, d in self.deltas[rid] for t in d.token_ids]

    def first_ts(self, rid: str) -> float:
        return self.deltas[rid][0][0]

    def finish_ts(self, rid: str) -> float:
        ts, last = self.deltas[rid][-1]
        assert last.finish_reason is not None
        return ts

    async def first_delta(self, rid: str) -> None:
        await until(lambda: bool(self.deltas[rid]) or rid in self.errors)
        assert rid not in self.errors, self.errors[rid]


class Gate:
    """Holds the worker's engine loop before its next step while shut (the step runs in a
    thread, so the event loop keeps serving NATS, fetches and heartbeats meanwhile); lets a test
    line requests and adapter events up deterministically instead of racing the decoder."""

    def __init__(self, worker: Worker) -> None:
        self._open = threading.Event()
        self._open.set()
        self.parked = threading.Event()
        self._step = worker.engine.step
        worker.engine.step = self._gated_step  # type: ignore[method-assign]

    def _gated_step(self):  # type: ignore[no-untyped-def]
        if not self._open.is_set():
            self.parked.set()
            self._open.wait()
        return self._step()

    def shut(self) -> None:
        """The next step waits (callable from the engine loop itself)."""
        self._open.clear()

    async def close(self) -> None:
        """Shut and wait until the engine loop is parked before a step."""
        self.shut()
        await self.wait_parked()

    async def wait_parked(self) -> None:
        await until(self.parked.is_set, what="engine loop parked at the gate")

    def open(self) -> None:
        self.parked.clear()
        self._open.set()


@dataclass
class Harness:
    demo: DemoModelInfo
    adapter_dirs: dict[str, Path]
    nats_url: str
    redis_url: str
    registrar: Registrar
    gateway: Gateway
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, key: str) -> str:
        """The store name of local adapter ``key`` in this test (unique in the shared Redis)."""
        return f"pg-{self.tag}-{key}"

    async def register(self, key: str, as_key: str | None = None, replace: bool = False) -> int:
        """Register local adapter ``key`` under the store name of ``as_key``; returns its version."""
        path = self.adapter_dirs[key]
        upload = AdapterUpload(
            self.name(as_key or key),
            (path / CONFIG_FILE).read_bytes(),
            (path / WEIGHTS_FILE).read_bytes(),
            replace=replace,
        )
        return (await self.registrar.register(TENANT, upload)).info.version

    async def delete(self, key: str) -> None:
        await self.registrar.delete(TENANT, self.name(key))

    @asynccontextmanager
    async def worker(
        self,
        *,
        max_loras: int = 2,
        host_cache_mb: int = 1024,
        heartbeat_interval_s: float = 0.5,
        wrap_fetch: Callable[[Callable[[str], Awaitable[tuple[bytes, bytes, str]]]], object]
        | None = None,
    ) -> AsyncIterator[Worker]:
        settings = WorkerSettings(
            role="both",
            model=str(self.demo.model_dir),
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            worker_id=f"paging-{uuid.uuid4().hex[:8]}",
            dtype="float32",
            device="cpu",
            block_size=4,
            num_kv_blocks=1024,
            max_num_seqs=16,
            max_loras=max_loras,
            max_lora_rank=64,
            host_cache_mb=host_cache_mb,
            heartbeat_interval_s=heartbeat_interval_s,
        )
        engine = await asyncio.to_thread(make_engine, settings)
        fetch, store = make_fetch(self.redis_url)
        assert fetch is not None and store is not None
        worker = Worker(settings, engine, wrap_fetch(fetch) if wrap_fetch else fetch)  # type: ignore[arg-type]
        worker.gate = Gate(worker)  # type: ignore[attr-defined]
        await worker.start()
        await flush_subscriptions(worker.bus)  # type: ignore[arg-type]
        try:
            yield worker
        finally:
            worker.gate.open()  # type: ignore[attr-defined]
            await worker.stop()
            await store.close()  # type: ignore[attr-defined]


async def flush_subscriptions(bus: Bus) -> None:
    """Make sure the server has processed this connection's SUBs before anyone publishes.

    nats-py 2.16 writes flush()'s PING straight to the socket, ahead of commands still queued
    for its flusher task (such as a SUB just issued), so one PONG does not prove the SUB
    arrived; a second PING is queued behind it.  (``Worker.start`` flushes once only.)
    """
    await bus.flush()
    await bus.flush()


async def until(
    cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def idle(worker: Worker) -> None:
    await until(
        lambda: not worker.active and not worker.engine.has_unfinished() and not worker.inbox,
        what="idle worker",
    )


@pytest.fixture
async def h(
    demo: DemoModelInfo, adapter_dirs: dict[str, Path], nats_url: str, redis_url: str
) -> AsyncIterator[Harness]:
    store = AdapterStore.from_url(redis_url)  # the default prefix: the one workers read
    events = EventPublisher(nats_url, name="paging-test-store")
    events.start()
    await until(lambda: events.connected, what="event publisher connected")
    registrar = Registrar(store, ModelConfig.from_dir(demo.model_dir), 64, events)
    bus = await Bus.connect(nats_url, "paging-test-gateway")
    gateway = Gateway(bus)
    await gateway.start()
    harness = Harness(demo, adapter_dirs, nats_url, redis_url, registrar, gateway)
    try:
        yield harness
    finally:
        for key in ADAPTERS:  # leave the shared Redis as we found it
            if await store.get(harness.name(key)) is not None:
                await store.delete_for(TENANT.name, harness.name(key))
        await bus.close()
        await events.close()
        await store.close()


# ---- (a) first request pages the adapter in ---------------------------------------------
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


# ---- (b) the running batch keeps decoding while another adapter pages in ------------------
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


# ---- (c) device slots and host budget: eviction, reload, pins ---------------------------
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


# ---- (d) replace and delete events ------------------------------------------------------
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


# ---- (e) heartbeats and prefetch ------------------------------------------------------
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


# ---- races between paging, replacement and eviction (each was a bug once) ---------------
def held(fetched: asyncio.Event, release: asyncio.Event):  # type: ignore[no-untyped-def]
    """A fetch wrapper: reads Redis, says so, then waits for ``release`` before returning."""

    def wrap(fetch):  # type: ignore[no-untyped-def]
        async def fetch_held(adapter: str) -> tuple[bytes, bytes, str]:
            got = await fetch(adapter)
            fetched.set()
            await release.wait()
            return got

        return fetch_held

    return wrap


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
